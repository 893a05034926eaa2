"""What a reproduction returns: a ``Report`` of tables, figures and headline numbers with its
settings, and how a report is written (tables as CSV + Markdown, figures as PNG, the report's
JSON with settings, headline, model and package version). ``ABOUT`` names each reproduction's
files and paper; :mod:`icl_mech.runner` runs them.
"""

from __future__ import annotations

import math
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from icl_mech import display, validate
from icl_mech.atomic_output import publish, seal, staging
from icl_mech.plotting import figure_title, save_figure
from icl_mech.settings import Settings
from icl_mech.version import __version__


@dataclass(frozen=True)
class About:
    """A reproduction's file prefix, the paper it reproduces and whether it needs a model."""

    prefix: str
    paper: str
    needs_model: bool = True


ABOUT: dict[str, About] = {
    "anchors": About(
        "anchors_", "Label words are anchors (Wang et al. 2023): flows, isolation, AUC-ROC"
    ),
    "anchor-applications": About(
        "anchor_apps_",
        "Label words are anchors, applications: re-weighting, compression, diagnosis",
    ),
    "task-vectors": About(
        "task_vectors_", "In-context learning creates task vectors (Hendel et al. 2023)"
    ),
    "function-vectors": About(
        "function_vectors_", "Function vectors in large language models (Todd et al. 2024)"
    ),
    "head-roles": About(
        "head_roles_",
        "Which attention heads matter for in-context learning (Yin & Steinhardt 2025), with "
        "attribution patching (Nanda 2023; Kramar et al. 2024) and induction heads (Olsson et "
        "al. 2022)",
    ),
    "vector-atlas": About(
        "vector_atlas_",
        "Every way to put a task into a vector: task vectors, function vectors, ICL state "
        "vectors (Li et al. 2024), I2CL (Li et al. 2025) and in-context vectors, side by side",
    ),
    "icv": About("icv_", "In-context vectors (Liu et al. 2023)"),
    "icl-gd": About(
        "icl_gd_",
        "Transformers learn in-context by gradient descent (von Oswald et al. 2023)",
        needs_model=False,
    ),
}


@dataclass
class Report:
    """What a reproduction computed: tables, figures and headline numbers, with its settings."""

    name: str
    settings: Settings
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)  # name -> matplotlib Figure
    headline: dict[str, Any] = field(default_factory=dict)
    model: str | None = None
    seconds: float = math.nan

    def write(self, out: str | Path) -> list[Path]:
        """Tables as ``<prefix><name>.csv`` + ``.md``, figures as ``<prefix><name>.png`` and
        ``<prefix>report.json`` (settings, headline, model, version, ``complete`` and each
        file's sha256), all or none (:mod:`icl_mech.atomic_output`); the paths, JSON last."""
        out = writable_folder(out)
        with staging(out) as folder:
            self.write_into(folder)
            return publish(folder, out, f"{ABOUT[self.name].prefix}report.json")

    def write_into(self, folder: Path) -> list[Path]:
        """``write``'s files straight into ``folder`` (a staging folder), the JSON sealed last."""
        prefix = ABOUT[self.name].prefix
        paths = []
        for name, frame in self.tables.items():
            paths += write_table(frame, folder, prefix + name)
        for name, figure in self.figures.items():
            paths.append(save_figure(figure, folder, prefix + name))
        names = [path.name for path in paths]
        return paths + [seal(folder, f"{prefix}report.json", self.record(), names)]

    def describe(self) -> dict[str, str]:
        """One line per file ``write`` makes: what each table, figure and the JSON holds."""
        prefix = ABOUT[self.name].prefix
        out = {}
        for name, frame in self.tables.items():
            shown = plain(frame)
            columns = [*map(str, shown.columns[:6]), *(["..."] if shown.shape[1] > 6 else [])]
            what = f"table {name}: {len(shown)} rows ({', '.join(columns)})"
            bounds = any(str(c).endswith("_low") for c in shown.columns)
            out[f"{prefix}{name}.csv"] = what + (", with the intervals' bounds" if bounds else "")
            out[f"{prefix}{name}.md"] = f"table {name} in Markdown" + (
                ", intervals as text" if bounds else ""
            )
        for name, figure in self.figures.items():
            out[f"{prefix}{name}.png"] = f"figure: {figure_title(figure) or name}"
        out[f"{prefix}report.json"] = (
            "settings, headline numbers, model and package version; every file's sha256"
        )
        return out

    def record(self) -> dict[str, Any]:
        return {
            "reproduction": self.name,
            "model": self.model,
            "seconds": round(self.seconds, 1),
            "icl_mech": __version__,
            "python": platform.python_version(),
            "settings": self.settings.as_dict(),
            "headline": self.headline,
        }

    def summary(self) -> str:
        """A short two-column table of the headline numbers."""
        rows = list(flatten(self.headline).items())
        width = max((len(k) for k, _ in rows), default=0)
        cls = type(self.settings)
        modes = {cls.quick(): "quick", cls.full(): "full"}
        mode = modes.get(self.settings, "custom settings")
        head = f"{self.name} on {self.model or 'no language model'} ({mode}, {self.seconds:.0f} s)"
        return "\n".join([head] + [f"  {k:<{width}}  {cell(v)}" for k, v in rows])

    def __repr__(self) -> str:
        return (
            f"Report({self.name!r}, model={self.model!r}, tables={list(self.tables)}, "
            f"figures={list(self.figures)})"
        )

    def _repr_html_(self) -> str:
        """The headline numbers (``x`` with its ``x_ci`` as ``0.60 [0.52, 0.68]``), the
        tables' names and sizes, and every figure inline (the report keeps its figures)."""
        return display.html(self)


def write_table(frame: pd.DataFrame, out: Path, name: str) -> list[Path]:
    """One table as ``<name>.csv`` (full precision) and ``<name>.md`` (4 significant digits,
    without the ``*_low``/``*_high`` bound columns: tables carry intervals as text there).
    Neither has an index column: the table is written as ``plain(frame)``."""
    csv, md = out / f"{name}.csv", out / f"{name}.md"
    shown = plain(frame)
    shown.to_csv(csv, index=False)
    bounds = [c for c in shown.columns if str(c).endswith(("_low", "_high"))]
    md.write_text(markdown(shown.drop(columns=bounds)))  # the CSV keeps the interval bounds
    return [csv, md]


def plain(frame: pd.DataFrame) -> pd.DataFrame:
    """The table as it is written: named index levels (``task``, ``method``) become columns,
    unnamed ones (row numbers, a ``RangeIndex``, ``concat``'s unnamed keys) are dropped."""
    named = [level for level in frame.index.names if level is not None]
    if named:
        frame = frame.reset_index(level=named)
    return frame.reset_index(drop=True)


def write_index(out: str | Path, title: str, sections: dict[str, dict[str, str]]) -> Path:
    """``<out>/index.md``: under one heading per section, each file (a link) with its line."""
    lines = [f"# {title}", "", "What this folder holds, one line per file."]
    for heading, files in sections.items():
        lines += ["", f"## {heading}", ""]
        lines += [f"- [`{name}`]({name}): {what}" for name, what in files.items()]
    path = Path(out) / "index.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def markdown(frame: pd.DataFrame) -> str:
    """A GitHub markdown table."""
    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "---|" * len(frame.columns)
    rows = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *rows]) + "\n"


def cell(value) -> str:
    if isinstance(value, (list, tuple)) and len(value) > 4:
        return f"[{cell(value[0])}, ..., {cell(value[-1])}] ({len(value)} values)"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(cell(v) for v in value) + "]"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return (str(value) or "(empty)").replace("|", "\\|").replace("\n", " ")


def flatten(values: dict, sep: str = " / ", prefix: str = "") -> dict:
    """Nested dicts as one level: ``{"a": {"b": 1}}`` → ``{"a / b": 1}``."""
    out = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(flatten(value, sep, f"{prefix}{key}{sep}"))
        else:
            out[f"{prefix}{key}"] = value
    return out


def writable_folder(out: str | Path) -> Path:
    """Create ``out`` if needed and check that files can be written there."""
    return validate.writable_folder(Path(out), "output folder (choose another with --out)")
