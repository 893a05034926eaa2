"""Reproduce von Oswald et al. 2023 (linear self-attention == one GD step) and the kernelised
variant; writes figures and a results table and returns the metrics."""

from __future__ import annotations

import pathlib
import time
from dataclasses import dataclass

import pandas as pd
import torch

from icl_mech.gd.construct import (
    OneStepGD,
    constructed_like,
    gd_reference,
    line_search_eta,
)
from icl_mech.gd.data import RegressionBatch, RegressionTasks, TeacherFeatures
from icl_mech.gd.figures import alignment_over_training, interpolation_curve, training_curve
from icl_mech.gd.metrics import Alignment, InterpolationCurve, Predictor, compare, interpolate
from icl_mech.gd.model import LinearSelfAttentionModel, LSAConfig
from icl_mech.gd.train import TrainConfig, TrainingRun, regression_loss, train
from icl_mech.models import torch_threads

PREFIX = "icl_gd_"


@dataclass(frozen=True)
class Settings:
    linear_steps: int
    linear_batch: int
    kernel_steps: int
    kernel_batch: int
    eval_every: int
    monitor_tasks: int
    test_tasks: int


QUICK = Settings(
    linear_steps=400, linear_batch=512, kernel_steps=400, kernel_batch=512, eval_every=50,
    monitor_tasks=256, test_tasks=4096,
)  # fmt: skip
FULL = Settings(
    linear_steps=2000, linear_batch=1024, kernel_steps=2500, kernel_batch=512, eval_every=100,
    monitor_tasks=1024, test_tasks=16384,
)  # fmt: skip


@dataclass
class LinearResult:
    run: TrainingRun
    reference: OneStepGD
    alignment: Alignment
    interpolation: InterpolationCurve

    @property
    def eta(self) -> float:
        return self.reference.eta


@dataclass
class KernelisedResult:
    """`references`: one GD step on "x", on "m(x)" (the trained embedding) and on the
    teacher's features "teacher f(x)", each with its own line-searched eta."""

    run: TrainingRun
    references: dict[str, OneStepGD]
    alignment: Alignment
    test_losses: dict[str, float]

    @property
    def eta(self) -> float:
        return self.references["m(x)"].eta


def linear_experiment(settings: Settings, seed: int, progress: bool = True) -> LinearResult:
    tasks = RegressionTasks()
    model = LinearSelfAttentionModel(LSAConfig(init_std=0.1, seed=seed))
    reference = gd_reference(model, tasks)
    monitor_batch = tasks.held_out(settings.monitor_tasks, seed=seed + 2)
    config = TrainConfig(
        steps=settings.linear_steps,
        batch_size=settings.linear_batch,
        eval_every=settings.eval_every,
        seed=seed,
        progress=progress,
    )
    run = train(
        model, tasks, config, monitor=lambda m: compare(m, reference, monitor_batch).as_dict()
    )
    test_batch = tasks.held_out(settings.test_tasks, seed=seed + 3)
    constructed = constructed_like(model, reference.eta)
    return LinearResult(
        run=run,
        reference=reference,
        alignment=compare(model, reference, test_batch),
        interpolation=interpolate(model, constructed, test_batch),
    )


def kernelised_experiment(settings: Settings, seed: int, progress: bool = True) -> KernelisedResult:
    """Nonlinear tasks y = W f(x) (f a fixed random tanh layer); the model embeds x with a
    trained MLP m before one LSA layer and is compared with one GD step on m(x)."""
    teacher = TeacherFeatures.random(d_in=10, d_feature=20, seed=seed + 10)
    tasks = RegressionTasks(teacher=teacher)
    model = LinearSelfAttentionModel(LSAConfig(init_std=0.1, d_embed=20, d_hidden=64, seed=seed))
    config = TrainConfig(
        steps=settings.kernel_steps,
        batch_size=settings.kernel_batch,
        eval_every=settings.eval_every,
        seed=seed + 20,
        progress=progress,
    )
    run = train(model, tasks, config)
    test_batch = tasks.held_out(settings.test_tasks, seed=seed + 3)
    references = {
        "x": OneStepGD(line_search_eta(tasks), d_in=tasks.d_in),
        "m(x)": gd_reference(model, tasks),
        "teacher f(x)": OneStepGD(
            line_search_eta(tasks, teacher), d_in=tasks.d_in, features=teacher
        ),
    }
    return KernelisedResult(
        run=run,
        references=references,
        alignment=compare(model, references["m(x)"], test_batch),
        test_losses={name: loss_on(gd, test_batch) for name, gd in references.items()},
    )


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


def markdown_table(table: pd.DataFrame) -> str:
    def cell(value) -> str:
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    for row in table.itertuples(index=False):
        lines.append("| " + " | ".join(cell(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


def loss_on(predictor: Predictor, batch: RegressionBatch) -> float:
    with torch.no_grad():
        return float(regression_loss(predictor(batch.tokens()), batch.y_test))


def write_figures(
    out_dir: pathlib.Path, linear: LinearResult, kernelised: KernelisedResult
) -> list[pathlib.Path]:
    history, kernel_eval = linear.run.to_frame(), kernelised.run.eval_batch
    kernel_references = {
        f"one GD step on {name}": loss_on(gd, kernel_eval)
        for name, gd in kernelised.references.items()
    }
    figures = {
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
    paths = []
    for name, figure in figures.items():
        path = out_dir / f"{PREFIX}{name}.png"
        figure.savefig(path, dpi=120)
        paths.append(path)
    return paths


def summary(linear: LinearResult, kernelised: KernelisedResult, seconds: float) -> dict:
    a, k = linear.alignment, kernelised.alignment
    return {
        "seconds": seconds,
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


def run(out_dir: pathlib.Path, quick: bool = False, seed: int = 0, progress: bool = True) -> dict:
    """Train, measure, write `icl_gd_*.png` and `icl_gd_results.{csv,md}` into `out_dir`."""
    start = time.perf_counter()
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = QUICK if quick else FULL
    with torch_threads(1):
        linear = linear_experiment(settings, seed, progress)
        kernelised = kernelised_experiment(settings, seed, progress)
    table = metrics_table(linear, kernelised)
    table.to_csv(out_dir / f"{PREFIX}results.csv", index=False)
    (out_dir / f"{PREFIX}results.md").write_text(markdown_table(table))
    paths = write_figures(out_dir, linear, kernelised)
    result = summary(linear, kernelised, time.perf_counter() - start)
    result["files"] = [str(p) for p in paths]
    return result
