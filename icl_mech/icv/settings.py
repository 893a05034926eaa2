"""The ICV reproduction's settings: the pair sets, the demonstration and test sizes and the λ
sweep of Liu et al. 2023."""

from __future__ import annotations

import math
from dataclasses import dataclass

from icl_mech import settings as base
from icl_mech.errors import IclMechError
from icl_mech.tasks import load_pairs

# the text metric of each bundled pair set's target style
STYLE_METRICS = {"negative_positive": "sentiment", "rude_polite": "inoffensiveness"}
BLEU_FLOOR = 30.0  # steering counts only at a λ that keeps this much BLEU to the source


@dataclass(frozen=True)
class Settings(base.Settings):
    """Per pair set: the first ``n_demonstrations`` pairs (after a seeded shuffle) make the ICV
    and the ICL prompt, the next ``n_test`` sources are paraphrased greedily with no steering,
    with ICL and with the ICV at each λ in ``strengths``; the ``n_dev`` sources after them
    (disjoint from both) choose the λ that the test then confirms (``choose_strength``)."""

    QUICK = dict(n_test=4, n_dev=4, n_demonstrations=8, strengths=(0.04, 0.08),
                 max_new_tokens=16)  # fmt: skip
    pair_sets: tuple[str, ...] = tuple(STYLE_METRICS)
    n_test: int = 16
    n_dev: int = 16
    n_demonstrations: int = 16
    strengths: tuple[float, ...] = (0.02, 0.04, 0.06, 0.08, 0.1, 0.12)
    max_new_tokens: int = 24
    example_strength: float = 0.06  # the λ shown in the before/after table (else the largest)
    paraphrase_strengths: tuple[float, ...] = (0.05, 0.1)  # of the worked example

    def check(self) -> None:
        base.known(self, "pair_sets", STYLE_METRICS)
        base.positive(self, "n_test", "n_dev", "n_demonstrations", "max_new_tokens")
        for name in self.pair_sets:  # demonstrations, test and dev sources are disjoint
            size, wanted = len(load_pairs(name)), self.n_demonstrations + self.n_test + self.n_dev
            if wanted > size:
                raise IclMechError(
                    f"icv settings: n_demonstrations + n_test + n_dev = {wanted} pairs, "
                    f"only {size} in {name!r}"
                )
        for name in ("strengths", "paraphrase_strengths"):
            values = getattr(self, name)
            if not values or not all(math.isfinite(v) for v in values):
                raise IclMechError(f"icv settings: {name} must be finite numbers, got {values}")
