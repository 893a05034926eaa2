"""The vector atlas's settings: every way to put a task into a vector, on the same tasks,
splits and queries (the task-vector protocol's train / dev / test), each vector's layer or
strength chosen on dev."""

from __future__ import annotations

import math
from dataclasses import dataclass

from icl_mech import settings as base
from icl_mech import tasks as bundled
from icl_mech.errors import IclMechError
from icl_mech.prompts import Task
from icl_mech.task_vectors import plan

IO_TASKS = ("country_capital", "antonym", "english_french", "uppercase")
CLASS_TASKS = ("sentiment", "question_type", "topic", "emotion")
FV_METHODS = ("exact", "attribution")


@dataclass(frozen=True)
class Settings(base.Settings):
    """Per task: ``n_dev`` queries choose every vector's layer (ICV: its strength among
    ``icv_strengths``), ``n_test`` score it; each query has its own ``n_demonstrations`` and
    ``n_dummies`` (ICL, θ, state vectors). The function vector sums the top ``k`` heads of the
    indirect effect on ``n_prompts`` training prompts (``fv_method``). State vectors: the mean of
    the last ``inner_last`` states, and the momentum step with ``momentum_beta`` and
    ``momentum_lr``. I2CL: ``i2cl_shots`` demonstrations per class (in all for input→output
    tasks), calibrated for ``epochs`` with AdamW (``lr``, ``weight_decay``), ``noise``, minibatches
    of ``calibration_batch``. ``strength`` multiplies the additive vectors."""

    QUICK = dict(
        io_tasks=("country_capital",), class_tasks=("sentiment",), n_dev=6, n_test=8,
        n_prompts=6, k=5, i2cl_shots=2, epochs=8, icv_strengths=(0.1,), icv_pairs=8,
    )  # fmt: skip
    io_tasks: tuple[str | Task, ...] = IO_TASKS
    class_tasks: tuple[str | Task, ...] = CLASS_TASKS
    n_demonstrations: int = 5
    n_dummies: int = 2
    n_dev: int = 16
    n_test: int = 32
    n_prompts: int = 16
    k: int = 10
    fv_method: str = "attribution"
    inner_last: int = 3
    momentum_beta: float = 0.5
    momentum_lr: float = 1.0
    i2cl_shots: int = 5
    epochs: int = 100
    lr: float = 0.01
    weight_decay: float = 1e-3
    noise: float = 1e-3
    calibration_batch: int = 2
    icv_pairs: int = 32
    icv_strengths: tuple[float, ...] = (0.05, 0.1, 0.2)
    strength: float = 1.0
    lens_top: int = 5
    batch_size: int = 16
    effect_batch_size: int = 8
    groups: int = 3

    def check(self) -> None:
        where = base.where(self)
        io = bundled.checked(self.io_tasks, where, "io_tasks", need="io", empty_ok=True)
        classes = bundled.checked(
            self.class_tasks, where, "class_tasks", need="classification", empty_ok=True
        )
        self._set("io_tasks", io)
        self._set("class_tasks", classes)
        if not self.io_tasks and not self.class_tasks:
            raise IclMechError(f"{where}: no tasks; give io_tasks or class_tasks")
        base.positive(self, "n_demonstrations", "n_dummies", "n_dev", "n_test", "n_prompts",
                      "inner_last", "i2cl_shots", "epochs", "calibration_batch", "icv_pairs",
                      "lens_top", "batch_size", "effect_batch_size", "groups")  # fmt: skip
        base.positive(self, "k", allow_zero=True)
        base.one_of(self, "fv_method", FV_METHODS)
        if self.inner_last > self.n_demonstrations + 1:
            raise IclMechError(
                f"{where}: inner_last={self.inner_last}, but a prompt of "
                f"{self.n_demonstrations} demonstrations has {self.n_demonstrations + 1} states"
            )
        if self.io_tasks and self.i2cl_shots < self.calibration_batch:
            raise IclMechError(
                f"{where}: i2cl_shots={self.i2cl_shots} demonstrations (in all, for an "
                f"input→output task) cannot fill minibatches of calibration_batch="
                f"{self.calibration_batch}; raise i2cl_shots or lower calibration_batch"
            )
        if not 0 <= self.momentum_beta < 1:
            raise IclMechError(
                f"{where}: momentum_beta must be in [0, 1), got {self.momentum_beta}"
            )
        for name in ("momentum_lr", "lr", "weight_decay", "noise", "strength"):
            value = getattr(self, name)
            if not math.isfinite(value) or (name != "strength" and value < 0):
                raise IclMechError(f"{where}: {name} must be finite and >= 0, got {value}")
        if not self.icv_strengths or not all(math.isfinite(s) for s in self.icv_strengths):
            raise IclMechError(
                f"{where}: icv_strengths must be finite numbers, got {self.icv_strengths}"
            )
        for item in (*self.io_tasks, *self.class_tasks):
            plan.check_fits(bundled.resolve(item), plan.sizes_of(self), self.seed, where)
