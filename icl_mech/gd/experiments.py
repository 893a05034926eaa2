"""The two experiments of von Oswald et al. 2023 on in-context linear regression: a trained
linear self-attention layer against one step of GD (linear), and an MLP embedding + LSA against
one GD step on the embedded inputs (kernelised)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from icl_mech.gd.construct import OneStepGD, constructed_like, gd_reference, line_search_eta
from icl_mech.gd.data import RegressionBatch, RegressionTasks, TeacherFeatures
from icl_mech.gd.metrics import Alignment, InterpolationCurve, Predictor, compare, interpolate
from icl_mech.gd.model import LinearSelfAttentionModel, LSAConfig
from icl_mech.gd.settings import Settings
from icl_mech.gd.train import TrainConfig, TrainingRun, regression_loss, train


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


def linear_experiment(settings: Settings, progress: bool = True) -> LinearResult:
    seed = settings.seed
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


def kernelised_experiment(settings: Settings, progress: bool = True) -> KernelisedResult:
    """Nonlinear tasks y = W f(x) (f a fixed random tanh layer); the model embeds x with a
    trained MLP m before one LSA layer and is compared with one GD step on m(x)."""
    seed = settings.seed
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


def loss_on(predictor: Predictor, batch: RegressionBatch) -> float:
    with torch.no_grad():
        return float(regression_loss(predictor(batch.tokens()), batch.y_test))
