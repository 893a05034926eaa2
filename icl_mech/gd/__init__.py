"""Transformers learn in-context by gradient descent (von Oswald et al. 2023), on the CPU.

In-context linear regression tasks, a hooked linear self-attention model, the weights that make
one layer compute one GD step, training, alignment metrics and figures. `reproduce.run` does
it all; the kernelised variant puts a trained MLP m(x) in front and compares with GD on m(x).
"""

from icl_mech.gd.construct import (
    OneStepGD,
    constructed_like,
    constructed_model,
    gd_reference,
    line_search_eta,
)
from icl_mech.gd.data import (
    RegressionBatch,
    RegressionTasks,
    TeacherFeatures,
    build_tokens,
    split_tokens,
)
from icl_mech.gd.figures import alignment_over_training, interpolation_curve, training_curve
from icl_mech.gd.metrics import (
    Alignment,
    InterpolationCurve,
    compare,
    interpolate,
    prediction_l2,
    sensitivities,
    sensitivity_cosine,
)
from icl_mech.gd.model import (
    EffectiveWeights,
    LinearSelfAttention,
    LinearSelfAttentionModel,
    LSAConfig,
    MLPEmbedding,
)
from icl_mech.gd.train import TrainConfig, TrainingRun, regression_loss, train

__all__ = [
    "Alignment",
    "EffectiveWeights",
    "InterpolationCurve",
    "LSAConfig",
    "LinearSelfAttention",
    "LinearSelfAttentionModel",
    "MLPEmbedding",
    "OneStepGD",
    "RegressionBatch",
    "RegressionTasks",
    "TeacherFeatures",
    "TrainConfig",
    "TrainingRun",
    "alignment_over_training",
    "build_tokens",
    "compare",
    "constructed_like",
    "constructed_model",
    "gd_reference",
    "interpolate",
    "interpolation_curve",
    "line_search_eta",
    "prediction_l2",
    "regression_loss",
    "sensitivities",
    "sensitivity_cosine",
    "split_tokens",
    "train",
    "training_curve",
]
