"""Adam training of a linear self-attention model on freshly drawn regression tasks."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pandas as pd
import torch
from tqdm import tqdm

from icl_mech.errors import IclMechError
from icl_mech.gd.data import RegressionBatch, RegressionTasks
from icl_mech.gd.model import LinearSelfAttentionModel
from icl_mech.threads import run_threads

Monitor = Callable[[LinearSelfAttentionModel], dict[str, float]]


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 3000
    batch_size: int = 512
    lr: float = 3e-3
    final_lr_fraction: float = 0.01
    eval_every: int = 100
    eval_tasks: int = 4096
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "eval_every", "eval_tasks"):
            if getattr(self, name) <= 0:
                raise IclMechError(
                    f"TrainConfig.{name} must be positive, got {getattr(self, name)}"
                )
        if self.lr <= 0 or not 0 < self.final_lr_fraction <= 1:
            raise IclMechError(
                f"need lr > 0 and 0 < final_lr_fraction <= 1, got {self.lr}, "
                f"{self.final_lr_fraction}"
            )


@dataclass
class TrainingRun:
    config: TrainConfig
    eval_batch: RegressionBatch  # the held-out tasks behind `eval_loss`
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)

    @property
    def final(self) -> dict[str, float]:
        return self.history[-1]

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.history)


def regression_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1/2 ||y_hat - y||^2, averaged over tasks."""
    return 0.5 * (prediction - target).pow(2).sum(-1).mean()


@torch.no_grad()
def evaluate(model: LinearSelfAttentionModel, batch: RegressionBatch) -> float:
    return float(regression_loss(model(batch.tokens()), batch.y_test))


def _cosine_lr(config: TrainConfig) -> Callable[[int], float]:
    def factor(step: int) -> float:
        progress = step / max(config.steps - 1, 1)
        cosine = 0.5 * (1 + math.cos(math.pi * progress))
        return config.final_lr_fraction + (1 - config.final_lr_fraction) * cosine

    return factor


def train(
    model: LinearSelfAttentionModel,
    tasks: RegressionTasks,
    config: TrainConfig = TrainConfig(),
    monitor: Monitor | None = None,
) -> TrainingRun:
    """Train in place with Adam and a cosine learning-rate decay; fully determined by the
    model's initial weights, `config.seed` and the thread count. At step 0, every `eval_every`
    steps and at the end, the loss on fixed held-out tasks and whatever `monitor(model)`
    returns are recorded.
    Intra-op threads: the run's count inside a reproduction, else the default policy
    (:func:`icl_mech.threads.default_threads`)."""
    if (tasks.d_in, tasks.d_out) != (model.cfg.d_in, model.cfg.d_out):
        raise IclMechError(
            f"tasks have (d_in, d_out) = ({tasks.d_in}, {tasks.d_out}) but the model was built "
            f"for ({model.cfg.d_in}, {model.cfg.d_out})"
        )
    with run_threads(None):
        return _train(model, tasks, config, monitor)


def _train(
    model: LinearSelfAttentionModel,
    tasks: RegressionTasks,
    config: TrainConfig,
    monitor: Monitor | None,
) -> TrainingRun:
    start = time.perf_counter()
    eval_batch = tasks.held_out(config.eval_tasks, seed=config.seed + 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _cosine_lr(config))
    batches = tasks.batches(config.batch_size, seed=config.seed)
    run = TrainingRun(config=config, eval_batch=eval_batch, seconds=0.0)

    def record(step: int, train_loss: float) -> None:
        row = {
            "step": step,
            "seconds": time.perf_counter() - start,
            "train_loss": train_loss,
            "eval_loss": evaluate(model, eval_batch),
        }
        if monitor is not None:
            row.update(monitor(model))
        run.history.append(row)

    record(0, float("nan"))
    bar = tqdm(range(1, config.steps + 1), desc="training LSA", disable=not config.progress)
    for step in bar:
        batch = next(batches)
        loss = regression_loss(model(batch.tokens()), batch.y_test)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if step % config.eval_every == 0 or step == config.steps:
            record(step, loss.item())
            bar.set_postfix(eval_loss=f"{run.history[-1]['eval_loss']:.4f}")
    run.seconds = time.perf_counter() - start
    return run
