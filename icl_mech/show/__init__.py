"""Token-level pictures: every picture exists as a Matplotlib ``Figure`` and as self-contained
HTML (inline styles only: no scripts, fonts or images fetched from anywhere)."""

from icl_mech.show.isolation import CutEdges, cut_edges, isolation_figure, isolation_html
from icl_mech.show.logit_lens import LogitLens, logit_lens, logit_lens_figure, logit_lens_html
from icl_mech.show.residual_map import residual_map_html
from icl_mech.show.saliency import saliency_figure, saliency_html
from icl_mech.show.sites import Sites, record_generation_sites, record_sites
from icl_mech.show.task_vectors import accuracy_heatmap, accuracy_heatmap_html, accuracy_matrix
from icl_mech.show.tokens import ROLE_COLOURS, prompt_figure, prompt_html

__all__ = [
    "ROLE_COLOURS",
    "CutEdges",
    "LogitLens",
    "Sites",
    "accuracy_heatmap",
    "accuracy_heatmap_html",
    "accuracy_matrix",
    "cut_edges",
    "isolation_figure",
    "isolation_html",
    "logit_lens",
    "logit_lens_figure",
    "logit_lens_html",
    "prompt_figure",
    "prompt_html",
    "record_generation_sites",
    "record_sites",
    "residual_map_html",
    "saliency_figure",
    "saliency_html",
]
