"""Which heads do in-context learning: attribution patching of every head (the function-vector
indirect effect, ``indirect_effects(..., method="attribution")``) and of the residual stream,
induction and prefix-matching scores, and mean ablation with exclusion (Yin & Steinhardt 2025)
scored by few-shot accuracy and the token-loss difference."""

from icl_mech.head_roles.ablation import (
    MeanAblateHeads,
    exclusion_sets,
    mean_ablation,
    random_heads,
)
from icl_mech.head_roles.ablation_experiment import (
    ablation_accuracy,
    ablation_token_loss,
    accuracy_table,
    head_sets,
)
from icl_mech.head_roles.comparison import TaskComparison, agreement, compare_task, verified
from icl_mech.head_roles.induction import HeadScores, induction_scores
from icl_mech.head_roles.residual_map import ResidualMap, residual_map, same_length_twins
from icl_mech.head_roles.results import HeadRoles
from icl_mech.head_roles.settings import Settings
from icl_mech.head_roles.token_loss import TokenLoss, text_windows, token_loss_difference

__all__ = [
    "HeadRoles",
    "HeadScores",
    "MeanAblateHeads",
    "ResidualMap",
    "Settings",
    "TaskComparison",
    "TokenLoss",
    "ablation_accuracy",
    "ablation_token_loss",
    "accuracy_table",
    "agreement",
    "compare_task",
    "exclusion_sets",
    "head_sets",
    "induction_scores",
    "mean_ablation",
    "random_heads",
    "residual_map",
    "same_length_twins",
    "text_windows",
    "token_loss_difference",
    "verified",
]
