"""One runner for every reproduction: settings → ``compute(model, settings)`` → ``Report``.

A reproduction module holds a frozen ``Settings`` subclass (``quick()`` / ``full()``, checked in
``__post_init__``) and ``compute(model, settings, progress) -> Report``
(:mod:`icl_mech.report`: tables, figures, headline). The runner adds thread setup and timing,
and writes the report's files atomically under the output folder's lock.

``reproduce("anchors", quick=True, n_test=8)`` is what ``icl-mech reproduce anchors --quick
--set n_test=8`` calls.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

from icl_mech.anchors import reproduce as anchors
from icl_mech.errors import unknown
from icl_mech.function_vectors import reproduce as function_vectors
from icl_mech.gd import reproduce as gd
from icl_mech.head_roles import reproduce as head_roles
from icl_mech.head_roles.settings import Settings as HeadRolesSettings
from icl_mech.icv import reproduce as icv
from icl_mech.models import load_model
from icl_mech.output_lock import output_lock
from icl_mech.report import ABOUT, About, Report, writable_folder
from icl_mech.settings import Settings
from icl_mech.task_vectors import reproduce as task_vectors
from icl_mech.threads import run_threads, threads_for
from icl_mech.vector_atlas import reproduce as vector_atlas
from icl_mech.vector_atlas.settings import Settings as VectorAtlasSettings


@dataclass(frozen=True)
class Reproduction:
    """A reproduction's ``Settings`` class and ``compute`` function, and what it is
    (:data:`icl_mech.report.ABOUT`: file prefix, paper, whether it needs a model)."""

    settings: type[Settings]
    run: Callable[..., Report]
    about: About

    @property
    def prefix(self) -> str:
        return self.about.prefix

    @property
    def paper(self) -> str:
        return self.about.paper

    @property
    def needs_model(self) -> bool:
        return self.about.needs_model

    def settings_class(self) -> type[Settings]:
        return self.settings

    def compute(self) -> Callable[..., Report]:
        return self.run


REPRODUCTIONS: dict[str, Reproduction] = {
    "anchors": Reproduction(anchors.AnalysisSettings, anchors.compute_analysis, ABOUT["anchors"]),
    "anchor-applications": Reproduction(
        anchors.ApplicationSettings, anchors.compute_applications, ABOUT["anchor-applications"]
    ),
    "task-vectors": Reproduction(
        task_vectors.Settings, task_vectors.compute, ABOUT["task-vectors"]
    ),
    "function-vectors": Reproduction(
        function_vectors.Settings, function_vectors.compute, ABOUT["function-vectors"]
    ),
    "head-roles": Reproduction(HeadRolesSettings, head_roles.compute, ABOUT["head-roles"]),
    "vector-atlas": Reproduction(VectorAtlasSettings, vector_atlas.compute, ABOUT["vector-atlas"]),
    "icv": Reproduction(icv.Settings, icv.compute, ABOUT["icv"]),
    "icl-gd": Reproduction(gd.Settings, gd.compute, ABOUT["icl-gd"]),
}


def reproduction_named(name: str) -> Reproduction:
    """The reproduction ``name`` (a key of ``REPRODUCTIONS``; a name, never a path)."""
    if not isinstance(name, str) or name not in REPRODUCTIONS:
        raise unknown("reproduction", name, REPRODUCTIONS)
    return REPRODUCTIONS[name]


def settings_for(name: str, quick: bool = False, **overrides) -> Settings:
    """The settings of reproduction ``name`` (quick or full), with ``overrides`` applied."""
    cls = reproduction_named(name).settings_class()
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
    """Run one reproduction; with ``out``, write its files there, all or none, one run at a
    time (:mod:`icl_mech.atomic_output`: another run into ``out`` is refused). Loads the
    embedded model if the reproduction needs one and none is given. ``settings.threads`` None:
    the thread policy (:mod:`icl_mech.threads`), read here before the model is loaded."""
    reproduction_named(name)
    if settings is None:
        settings = settings_for(name, quick, **overrides)
    elif overrides:
        settings = settings.replace(**overrides)
    reproduction = REPRODUCTIONS[name]
    # out's lock from before the model loads to the written report: a second run is refused
    with output_lock(writable_folder(out)) if out is not None else nullcontext():
        threads = threads_for(settings.threads)  # before this run adds to the load average
        if reproduction.needs_model and model is None:
            model = load_model()
        start = time.perf_counter()
        with run_threads(threads):
            report = reproduction.compute()(model if reproduction.needs_model else None,
                                            settings, progress=progress)  # fmt: skip
        report.seconds = time.perf_counter() - start
        if model is not None and reproduction.needs_model:
            report.model = model.cfg.model_name
        if out is not None:
            report.write(out)
    return report
