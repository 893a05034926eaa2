"""Settings of the gradient-descent reproduction (read by the runner and the CLI)."""

from __future__ import annotations

from dataclasses import dataclass

from icl_mech import settings as base


@dataclass(frozen=True)
class Settings(base.Settings):
    """Training steps and batch sizes of the two experiments; ``eval_every`` steps the held-out
    loss and alignment are recorded on ``monitor_tasks`` tasks; ``test_tasks`` score the end."""

    QUICK = dict(
        linear_steps=400, linear_batch=512, kernel_steps=400, eval_every=50, monitor_tasks=256,
        test_tasks=4096,
    )  # fmt: skip
    linear_steps: int = 2000
    linear_batch: int = 1024
    kernel_steps: int = 2500
    kernel_batch: int = 512
    eval_every: int = 100
    monitor_tasks: int = 1024
    test_tasks: int = 16384

    def check(self) -> None:
        base.positive(self, *self.keys()[2:])
