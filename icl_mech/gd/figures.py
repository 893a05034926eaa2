"""Figures of the linear-self-attention-vs-GD reproduction; each function returns a Figure."""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd
from matplotlib.figure import Figure

from icl_mech.errors import IclMechError
from icl_mech.gd.metrics import InterpolationCurve


def _require_columns(frame: pd.DataFrame, columns: tuple[str, ...]) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise IclMechError(
            f"training history lacks columns {missing}; it has {list(frame.columns)}"
        )


def training_curve(
    history: pd.DataFrame,
    reference_losses: Mapping[str, float],
    title: str = "Linear self-attention vs one step of GD",
    model_label: str = "trained LSA",
) -> Figure:
    """Held-out loss over training, with each reference loss (e.g. one GD step) as a line."""
    _require_columns(history, ("step", "eval_loss"))
    figure = Figure(figsize=(5.5, 3.8), layout="constrained")
    ax = figure.subplots()
    ax.plot(history["step"], history["eval_loss"], color="C0", label=model_label)
    styles = ("--", ":", "-.")
    for i, (label, loss) in enumerate(reference_losses.items()):
        ax.axhline(loss, color=f"C{i + 1}", linestyle=styles[i % len(styles)], label=label)
    ax.set_xlabel("training step")
    ax.set_ylabel("held-out loss  ½‖ŷ − y‖²")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.legend()
    return figure


def alignment_over_training(history: pd.DataFrame) -> Figure:
    """Prediction distance and sensitivity cosine between the model and one GD step."""
    _require_columns(history, ("step", "prediction_l2", "sensitivity_cosine", "loss_ratio"))
    figure = Figure(figsize=(10, 3.4), layout="constrained")
    left, middle, right = figure.subplots(1, 3)
    left.plot(history["step"], history["prediction_l2"], color="C0")
    left.set_ylabel("‖ŷ_LSA − ŷ_GD‖₂")
    left.set_yscale("log")
    middle.plot(history["step"], history["sensitivity_cosine"], color="C1")
    middle.set_ylabel("cos(∂ŷ_LSA/∂x, ∂ŷ_GD/∂x)")
    middle.set_ylim(min(0.0, float(history["sensitivity_cosine"].min())), 1.02)
    right.plot(history["step"], history["loss_ratio"], color="C2")
    right.axhline(1.0, color="grey", linestyle="--")
    right.set_ylabel("loss LSA / loss GD")
    right.set_yscale("log")
    for ax in (left, middle, right):
        ax.set_xlabel("training step")
    figure.suptitle("Alignment of the trained model with one GD step")
    return figure


def interpolation_curve(curve: InterpolationCurve, gd_loss: float | None = None) -> Figure:
    """Loss along (1 - α)·trained + α·constructed effective weights."""
    figure = Figure(figsize=(5.5, 3.8), layout="constrained")
    ax = figure.subplots()
    ax.plot(curve.alphas, curve.losses, marker="o", color="C0", label="interpolated model")
    if gd_loss is not None:
        ax.axhline(gd_loss, color="C1", linestyle="--", label="one GD step")
        # Keep at least ±5% of the GD loss in view so tiny differences do not look large.
        low, high = ax.get_ylim()
        ax.set_ylim(min(low, 0.95 * gd_loss), max(high, 1.05 * gd_loss))
    ax.set_xlabel("α  (0 = trained, 1 = GD construction)")
    ax.set_ylabel("held-out loss")
    ax.set_title("Interpolating trained and constructed weights")
    ax.legend()
    return figure
