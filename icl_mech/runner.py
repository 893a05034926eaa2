"""One runner for every reproduction: settings → ``compute(model, settings)`` → ``Report``.

A reproduction module holds a frozen ``Settings`` subclass (``quick()`` / ``full()``, checked in
``__post_init__``) and ``compute(model, settings, progress) -> Report``. Everything they share
lives here: thread setup, timing, writing tables (CSV + Markdown) and figures (PNG), the
report's JSON (settings, headline, model, package version) and the printed summary.

``reproduce("anchors", quick=True, n_test=8)`` is what ``icl-mech reproduce anchors --quick
--set n_test=8`` calls.
"""

from __future__ import annotations

import importlib
import math
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from icl_mech import validate
from icl_mech.errors import IclMechError
from icl_mech.settings import Settings
from icl_mech.vectors import dumps


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
        ``<prefix>report.json`` (settings, headline, model, version)."""
        from icl_mech.plotting import save_figure

        out = writable_folder(out)
        prefix = REPRODUCTIONS[self.name].prefix
        paths = []
        for name, frame in self.tables.items():
            paths += write_table(frame, out, prefix + name)
        for name, figure in self.figures.items():
            paths.append(save_figure(figure, out, prefix + name))
        paths.append(out / f"{prefix}report.json")
        paths[-1].write_text(dumps(self.record(), indent=1) + "\n")
        return paths

    def record(self) -> dict[str, Any]:
        from icl_mech import __version__

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
        return "\n".join([head] + [f"  {k:<{width}}  {_cell(v)}" for k, v in rows])

    def __repr__(self) -> str:
        return (
            f"Report({self.name!r}, model={self.model!r}, tables={list(self.tables)}, "
            f"figures={list(self.figures)})"
        )

    def _repr_html_(self) -> str:
        """The headline numbers (``x`` with its ``x_ci`` as ``0.60 [0.52, 0.68]``), the
        tables' names and sizes, and every figure inline (the report keeps its figures)."""
        from icl_mech.show import cards

        values, rows = flatten(self.headline), []
        for key, value in values.items():
            if key.endswith("_ci") and key.removesuffix("_ci") in values:
                continue  # shown beside its value
            bounds = values.get(f"{key}_ci")
            if isinstance(value, (int, float)) and isinstance(bounds, list) and len(bounds) == 2:
                value = cards.interval(value, *bounds)
            rows.append((key, _cell(value) if isinstance(value, (list, tuple)) else value))
        paper = REPRODUCTIONS[self.name].paper if self.name in REPRODUCTIONS else ""
        sizes = {f"table {n}": f"{len(t)} × {t.shape[1]}" for n, t in self.tables.items()}
        return cards.card(
            self.summary().splitlines()[0],
            cards.note(paper) if paper else "",
            cards.table(pd.DataFrame(rows, columns=["headline", "value"]), max_rows=None),
            *(
                cards.figure(figure, name, close=False, caption=name)
                for name, figure in self.figures.items()
            ),
            items=sizes,
        )


def write_table(frame: pd.DataFrame, out: Path, name: str) -> list[Path]:
    """One table as ``<name>.csv`` (full precision) and ``<name>.md`` (4 significant digits,
    without the ``*_low``/``*_high`` bound columns: tables carry intervals as text there)."""
    keep_index = not isinstance(frame.index, pd.RangeIndex)
    csv, md = out / f"{name}.csv", out / f"{name}.md"
    frame.to_csv(csv, index=keep_index)
    shown = frame.reset_index() if keep_index else frame
    bounds = [c for c in shown.columns if str(c).endswith(("_low", "_high"))]
    md.write_text(markdown(shown.drop(columns=bounds)))  # the CSV keeps the interval bounds
    return [csv, md]


def markdown(frame: pd.DataFrame) -> str:
    """A GitHub markdown table."""
    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "---|" * len(frame.columns)
    rows = [
        "| " + " | ".join(_cell(v) for v in row) + " |" for row in frame.itertuples(index=False)
    ]
    return "\n".join([header, rule, *rows]) + "\n"


def _cell(value) -> str:
    if isinstance(value, (list, tuple)) and len(value) > 4:
        return f"[{_cell(value[0])}, ..., {_cell(value[-1])}] ({len(value)} values)"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_cell(v) for v in value) + "]"
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


@dataclass(frozen=True)
class Reproduction:
    """Where a reproduction's ``Settings`` and ``compute`` live, and its file prefix."""

    module: str
    prefix: str
    paper: str
    needs_model: bool = True
    settings_name: str = "Settings"
    compute_name: str = "compute"

    def settings_class(self) -> type[Settings]:
        return getattr(importlib.import_module(self.module), self.settings_name)

    def compute(self):
        return getattr(importlib.import_module(self.module), self.compute_name)


REPRODUCTIONS: dict[str, Reproduction] = {
    "anchors": Reproduction(
        "icl_mech.anchors.reproduce",
        "anchors_",
        "Label words are anchors (Wang et al. 2023): flows, isolation, AUC-ROC",
        settings_name="AnalysisSettings",
        compute_name="compute_analysis",
    ),
    "anchor-applications": Reproduction(
        "icl_mech.anchors.reproduce",
        "anchor_apps_",
        "Label words are anchors, applications: re-weighting, compression, diagnosis",
        settings_name="ApplicationSettings",
        compute_name="compute_applications",
    ),
    "task-vectors": Reproduction(
        "icl_mech.task_vectors.reproduce",
        "task_vectors_",
        "In-context learning creates task vectors (Hendel et al. 2023)",
    ),
    "function-vectors": Reproduction(
        "icl_mech.function_vectors.reproduce",
        "function_vectors_",
        "Function vectors in large language models (Todd et al. 2024)",
    ),
    "icv": Reproduction("icl_mech.icv.reproduce", "icv_", "In-context vectors (Liu et al. 2023)"),
    "icl-gd": Reproduction(
        "icl_mech.gd.reproduce",
        "icl_gd_",
        "Transformers learn in-context by gradient descent (von Oswald et al. 2023)",
        needs_model=False,
    ),
}


def settings_for(name: str, quick: bool = False, **overrides) -> Settings:
    """The settings of reproduction ``name`` (quick or full), with ``overrides`` applied."""
    if name not in REPRODUCTIONS:
        raise IclMechError(f"unknown reproduction {name!r}; choose from {list(REPRODUCTIONS)}")
    cls = REPRODUCTIONS[name].settings_class()
    return cls.quick(**overrides) if quick else cls.full(**overrides)


def reproduce(
    name: str,
    model=None,
    settings: Settings | None = None,
    *,
    quick: bool = False,
    out: str | Path | None = None,
    progress: bool = True,
    **overrides,
) -> Report:
    """Run one reproduction; with ``out``, write its files there. Loads the embedded model if
    the reproduction needs one and none is given."""
    from icl_mech.models import load_model, torch_threads

    if settings is None:
        settings = settings_for(name, quick, **overrides)
    elif overrides:
        settings = settings.replace(**overrides)
    if out is not None:
        writable_folder(out)
    reproduction = REPRODUCTIONS[name]
    if reproduction.needs_model and model is None:
        model = load_model()
    start = time.perf_counter()
    with torch_threads(settings.threads):
        report = reproduction.compute()(model if reproduction.needs_model else None, settings,
                                        progress=progress)  # fmt: skip
    report.seconds = time.perf_counter() - start
    if model is not None and reproduction.needs_model:
        report.model = model.cfg.model_name
    if out is not None:
        report.write(out)
    return report
