"""Everything built in, imported once so that it is registered: every kind of the hook
registry (``kinds()``, ``make()``) and every notebook card (:mod:`icl_mech.display`).

A kind enters :data:`icl_mech.hooks.CATALOGUE` when the module defining it is imported, and a
card enters :data:`icl_mech.display.RENDERERS` when its picture module is. ``import icl_mech``
imports this module, so both are complete before anything is made or displayed. A new method
adds its kinds module to ``KIND_MODULES`` and its figures module to ``PICTURE_MODULES``.
"""

from __future__ import annotations

from icl_mech import interventions, show
from icl_mech.anchors import aucroc, isolation, positions_continued, reweighting, saliency
from icl_mech.anchors import figures as anchor_figures
from icl_mech.context_vectors import aggregation, injection, states
from icl_mech.function_vectors import heads
from icl_mech.head_roles import ablation
from icl_mech.hooks import kinds, make
from icl_mech.icv import figures as icv_figures
from icl_mech.icv import steering
from icl_mech.show import report_card, tokens
from icl_mech.show import residual_map as residual_map_picture
from icl_mech.task_vectors import figures as task_vector_figures
from icl_mech.task_vectors import patching

KIND_MODULES = (
    interventions,
    aucroc,
    positions_continued,
    isolation,
    reweighting,
    saliency,
    heads,
    ablation,
    injection,
    states,
    aggregation,
    steering,
    patching,
)
PICTURE_MODULES = (
    show,
    tokens,
    report_card,
    anchor_figures,
    task_vector_figures,
    icv_figures,
    residual_map_picture,
)

__all__ = ["KIND_MODULES", "PICTURE_MODULES", "kinds", "make"]
