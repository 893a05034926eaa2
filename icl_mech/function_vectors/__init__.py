"""Function vectors (Todd et al., ICLR 2024): a few attention heads carry the task.

Read and patch single heads through the registry (``CaptureHeads``, ``PatchHeads``), average
their outputs over clean ICL prompts (``mean_head_outputs``), measure every head's indirect
effect on shuffled-label prompts in one cached batched pass per layer (``indirect_effects``),
sum the top heads' outputs through ``W_O`` into a ``FunctionVector`` added to the residual
stream, and compare it with baseline, ICL and the task vectors on the same queries
(``evaluate``).
"""

from icl_mech.function_vectors.effects import IndirectEffect
from icl_mech.function_vectors.evaluate import evaluate, evaluate_task, shuffled_twins
from icl_mech.function_vectors.heads import (
    CaptureHeads,
    Head,
    PatchHeads,
    check_heads,
    head_output_weights,
    head_point,
    mean_head_outputs,
)
from icl_mech.function_vectors.indirect import (
    effect_prompts,
    indirect_effects,
    naive_indirect_effects,
    shuffle_labels,
)
from icl_mech.function_vectors.results import FunctionVectorResult, FunctionVectorResults
from icl_mech.function_vectors.settings import Settings
from icl_mech.function_vectors.vector import FunctionVector, function_vector, head_contributions

__all__ = [
    "CaptureHeads",
    "FunctionVector",
    "FunctionVectorResult",
    "FunctionVectorResults",
    "Head",
    "IndirectEffect",
    "PatchHeads",
    "Settings",
    "check_heads",
    "effect_prompts",
    "evaluate",
    "evaluate_task",
    "function_vector",
    "head_contributions",
    "head_output_weights",
    "head_point",
    "indirect_effects",
    "mean_head_outputs",
    "naive_indirect_effects",
    "shuffle_labels",
    "shuffled_twins",
]
