"""The head-roles reproduction's settings: which tasks, how many prompts for the indirect
effect, the induction sequences, the ablation sizes and the long text for the token loss."""

from __future__ import annotations

from dataclasses import dataclass

from icl_mech import settings as base
from icl_mech import tasks as bundled
from icl_mech.errors import IclMechError
from icl_mech.prompts import Task


@dataclass(frozen=True)
class Settings(base.Settings):
    """Per input → output task: ``n_prompts`` clean ICL prompts (``n_demonstrations`` each)
    and their shuffled-label twins give every head's indirect effect, exact and by attribution;
    the function vector of each one's top ``k`` heads is added to zero-shot prompts at the layer
    best on ``n_dev`` queries and scored on ``n_test``. Induction scores come from
    ``n_sequences`` random sequences of ``n_tokens`` repeated twice. Ablation: for each k in
    ``ablation_ks``, the exclusion sets (and random heads from the same layers) are
    mean-ablated on ``n_test`` few-shot prompts of every task (``class_demonstrations`` per
    class for classification), and on ``n_windows`` windows of ``window`` tokens of the
    package's own text for the token-loss difference (loss at ``late`` minus at ``early``,
    each averaged over ``span`` tokens)."""

    QUICK = dict(
        io_tasks=("country_capital",), class_tasks=("sentiment",), n_prompts=8,
        n_dev=8, n_test=12, n_sequences=4, n_tokens=30, ablation_ks=(1, 2, 5), n_windows=2,
        window=128, early=20, late=120, span=5, map_layers=4,
    )  # fmt: skip
    io_tasks: tuple[str | Task, ...] = ("country_capital", "antonym", "english_french", "uppercase")
    class_tasks: tuple[str | Task, ...] = ("sentiment", "topic")
    n_prompts: int = 16
    n_demonstrations: int = 5
    class_demonstrations: int = 1
    effect_batch_size: int = 8
    k: int = 10
    n_dev: int = 16
    n_test: int = 32
    batch_size: int = 16
    n_sequences: int = 16
    n_tokens: int = 50
    ablation_ks: tuple[int, ...] = (1, 2, 5, 10, 20)
    n_windows: int = 6
    window: int = 512
    early: int = 50
    late: int = 500
    span: int = 10
    map_layers: int = 0  # layers of the exact residual map (evenly spaced; 0: every layer)

    def check(self) -> None:
        where = base.where(self)
        self._set("io_tasks", bundled.checked(self.io_tasks, where, "io_tasks", need="io"))
        self._set(
            "class_tasks",
            bundled.checked(self.class_tasks, where, "class_tasks", need="classification",
                            empty_ok=True),
        )  # fmt: skip
        base.positive(self, "n_prompts", "n_demonstrations", "class_demonstrations",
                      "effect_batch_size", "k", "n_dev", "n_test", "batch_size", "n_sequences",
                      "n_windows", "span")  # fmt: skip
        base.positive(self, "map_layers", allow_zero=True)
        if self.n_tokens < 2:
            raise IclMechError(f"{where}: n_tokens={self.n_tokens} must be at least 2")
        if not self.ablation_ks or any(
            isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in self.ablation_ks
        ):
            raise IclMechError(
                f"{where}: ablation_ks={self.ablation_ks!r} must be whole numbers >= 1, e.g. "
                "1,2,5,10,20"
            )
        if not (self.span <= self.early <= self.late - self.span and self.late < self.window):
            raise IclMechError(
                f"{where}: early={self.early}, late={self.late}, span={self.span}, "
                f"window={self.window}; the token loss needs span <= early <= late - span and "
                "late < window (e.g. early=50, late=500, span=10, window=512)"
            )
