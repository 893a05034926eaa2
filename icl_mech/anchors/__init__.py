"""Label words are anchors (Wang et al., EMNLP 2023): saliency flows, label-word isolation,
AUC-ROC_l and R_l, as registry probes and interventions for any TransformerLens model."""

from .aucroc import AnchorAuc, QueryAttention, anchor_auc, class_scores, cumulative_ratio, roc_auc
from .evaluate import AnchorResults, evaluate
from .experiment import AnalysisSettings, TaskAnalysis, analyse_prompts, analyse_task
from .flows import FLOWS, Flows, flow_values, flows
from .isolation import (
    Isolate,
    IsolateLabelWords,
    IsolateRandomWords,
    deep_layers,
    random_word_mask,
    shallow_layers,
)
from .loyalty import Loyalty, isolation_loyalty, jaccard, label_loyalty, top_k_jaccard
from .readout import anchor_mask, target_logits
from .saliency import SaliencyProbe, SaliencyResult, saliency

__all__ = [
    "FLOWS",
    "AnalysisSettings",
    "AnchorAuc",
    "AnchorResults",
    "Flows",
    "Isolate",
    "IsolateLabelWords",
    "IsolateRandomWords",
    "Loyalty",
    "QueryAttention",
    "SaliencyProbe",
    "SaliencyResult",
    "TaskAnalysis",
    "analyse_prompts",
    "analyse_task",
    "anchor_auc",
    "anchor_mask",
    "class_scores",
    "cumulative_ratio",
    "deep_layers",
    "evaluate",
    "flow_values",
    "flows",
    "isolation_loyalty",
    "jaccard",
    "label_loyalty",
    "random_word_mask",
    "roc_auc",
    "saliency",
    "shallow_layers",
    "target_logits",
    "top_k_jaccard",
]
