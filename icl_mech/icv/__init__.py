"""In-context vectors (Liu et al. 2023): extraction, norm-preserving MLP-output steering,
steered generation and offline evaluation.

- ``extract_icv(model, pairs)`` → ``ICV`` (a ``icl_mech.vectors.Vector``: ``save``/``load``,
  ``intervention``, ``apply`` as a context manager);
- ``ICVSteering`` (catalogue kind ``"icv"``) steers ``blocks.{l}.hook_mlp_out`` of every layer
  with the norm-preserving formula, several ICVs at once, positions all / prompt / new;
- ``generate`` runs TransformerLens generation (key/value cache on) inside ``attach``;
- ``evaluate(model, pair_sets, settings)`` compares no steering, ICL prompting and ICV over a
  λ sweep, scored offline (``text_metrics``); ``reproduce.run`` writes the figures.
"""

from icl_mech.icv import text_metrics
from icl_mech.icv.evaluate import evaluate, evaluate_pairs, paraphrase_prompt
from icl_mech.icv.extract import extract_icv, first_component
from icl_mech.icv.figures import examples_figure, layers_figure, sweep_figure
from icl_mech.icv.generation import Generations, generate
from icl_mech.icv.results import StyleEvaluation, StyleResults
from icl_mech.icv.settings import Settings
from icl_mech.icv.steering import ICVSteering, steer
from icl_mech.icv.vector import ICV
from icl_mech.icv.worked import (
    PARAPHRASE_EXAMPLE,
    SENTIMENT_PAIRS,
    WorkedExample,
    worked_example,
)

__all__ = [
    "ICV",
    "PARAPHRASE_EXAMPLE",
    "SENTIMENT_PAIRS",
    "Generations",
    "ICVSteering",
    "Settings",
    "StyleEvaluation",
    "StyleResults",
    "WorkedExample",
    "evaluate",
    "evaluate_pairs",
    "examples_figure",
    "extract_icv",
    "first_component",
    "generate",
    "layers_figure",
    "paraphrase_prompt",
    "steer",
    "sweep_figure",
    "text_metrics",
    "worked_example",
]
