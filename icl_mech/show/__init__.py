"""Token-level pictures: every picture exists as a Matplotlib ``Figure`` and as self-contained
HTML (inline styles only: no scripts, fonts or images fetched from anywhere)."""

from icl_mech.show.saliency import saliency_figure, saliency_html
from icl_mech.show.tokens import ROLE_COLOURS, prompt_figure, prompt_html

__all__ = ["ROLE_COLOURS", "prompt_figure", "prompt_html", "saliency_figure", "saliency_html"]
