"""Reproduce von Oswald et al. 2023 (linear self-attention == one GD step) and the kernelised
variant, through the runner."""

from __future__ import annotations

import pandas as pd

from icl_mech.gd.experiments import (
    KernelisedResult,
    LinearResult,
    kernelised_experiment,
    linear_experiment,
    loss_on,
)
from icl_mech.gd.figures import alignment_over_training, interpolation_curve, training_curve
from icl_mech.gd.settings import Settings
from icl_mech.report import Report


def metrics_table(linear: LinearResult, kernelised: KernelisedResult) -> pd.DataFrame:
    rows = []
    for name, result in (("linear", linear), ("kernelised", kernelised)):
        rows.append(
            {
                "variant": name,
                "steps": result.run.config.steps,
                "train_seconds": result.run.seconds,
                "eta": result.eta,
                **result.alignment.as_dict(),
            }
        )
    return pd.DataFrame(rows)


def compute(model, settings: Settings, progress: bool = True) -> Report:
    """Train both models and measure them (``model`` is unused: the models are built here)."""
    linear = linear_experiment(settings, progress)
    kernelised = kernelised_experiment(settings, progress)
    return Report(
        "icl-gd",
        settings,
        tables={"results": metrics_table(linear, kernelised)},
        figures=figures(linear, kernelised),
        headline=summary(linear, kernelised),
    )


def figures(linear: LinearResult, kernelised: KernelisedResult) -> dict:
    history, kernel_eval = linear.run.to_frame(), kernelised.run.eval_batch
    kernel_references = {
        f"one GD step on {name}": loss_on(gd, kernel_eval)
        for name, gd in kernelised.references.items()
    }
    return {
        "training_curve": training_curve(
            history, {"one GD step": loss_on(linear.reference, linear.run.eval_batch)}
        ),
        "alignment": alignment_over_training(history),
        "interpolation": interpolation_curve(linear.interpolation, linear.alignment.gd_loss),
        "kernelised": training_curve(
            kernelised.run.to_frame(),
            kernel_references,
            title="MLP embedding + LSA vs GD on features",
            model_label="trained MLP + LSA",
        ),
    }


def summary(linear: LinearResult, kernelised: KernelisedResult) -> dict:
    a, k = linear.alignment, kernelised.alignment
    return {
        "steps": linear.run.config.steps,
        "eta": linear.eta,
        "trained_loss": a.model_loss,
        "gd_loss": a.gd_loss,
        "loss_ratio": a.loss_ratio,
        "prediction_l2": a.prediction_l2,
        "sensitivity_cosine": a.sensitivity_cosine,
        "interpolation_losses": linear.interpolation.losses,
        "interpolation_barrier": linear.interpolation.barrier,
        "kernel_steps": kernelised.run.config.steps,
        "kernel_eta": kernelised.eta,
        "kernel_trained_loss": k.model_loss,
        "kernel_gd_on_m_loss": k.gd_loss,
        "kernel_loss_ratio": k.loss_ratio,
        "kernel_prediction_l2": k.prediction_l2,
        "kernel_sensitivity_cosine": k.sensitivity_cosine,
        "kernel_gd_on_x_loss": kernelised.test_losses["x"],
        "kernel_gd_on_teacher_loss": kernelised.test_losses["teacher f(x)"],
    }
