"""Task vectors (Hendel, Geva, Globerson 2023): ICL compresses the demonstrations into θ(S).

``extract`` θ(S) at every layer, patch it into a zero-shot query (``ReplaceResidual``) or add
it / the mean ICL − zero-shot difference (``AddToResidual``), sweep every layer in one cached
batched pass (``sweep_logits``), and evaluate baseline / ICL / task-vector accuracy per task.
"""

from icl_mech.task_vectors.conflict import ConflictResult, conflicting_tasks
from icl_mech.task_vectors.evaluate import evaluate, evaluate_task
from icl_mech.task_vectors.extract import (
    draw_dummies,
    extract,
    mean_difference,
    sample_sets,
)
from icl_mech.task_vectors.generate import Generation, greedy
from icl_mech.task_vectors.patching import AddToResidual, ReplaceResidual
from icl_mech.task_vectors.results import TaskResult, TaskVectorResults
from icl_mech.task_vectors.scored import sweep_hits
from icl_mech.task_vectors.settings import Settings
from icl_mech.task_vectors.sweep import (
    LayerSweep,
    forced_sweep_logits,
    naive_sweep_logits,
    sweep_logits,
)
from icl_mech.task_vectors.vector import TaskVector

__all__ = [
    "AddToResidual",
    "ConflictResult",
    "Settings",
    "TaskResult",
    "TaskVectorResults",
    "conflicting_tasks",
    "evaluate",
    "evaluate_task",
    "Generation",
    "LayerSweep",
    "ReplaceResidual",
    "TaskVector",
    "draw_dummies",
    "extract",
    "forced_sweep_logits",
    "greedy",
    "mean_difference",
    "naive_sweep_logits",
    "sample_sets",
    "sweep_hits",
    "sweep_logits",
]
