"""Worked examples: one prompt, completed without and with an ICV, side by side.

``SENTIMENT_PAIRS`` are the five negative → positive demonstrations of the study notes (from
the paper's demo), used with ``PARAPHRASE_EXAMPLE`` at λ ≈ 0.10.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from icl_mech.icv.extract import ICV, extract_icv
from icl_mech.icv.generation import generate
from icl_mech.icv.steering import ICVSteering

SENTIMENT_PAIRS: tuple[tuple[str, str], ...] = (
    ("Zero stars, I hate it.", "Five stars, I love it."),
    ("it was terrible !", "it was awesome!"),
    ("i did nt like it.", "i love it."),
    ("i would call this the worse denny 's ever ", "i would call this the best denny 's ever "),
    ("i would recommend find another place.", "i would recommend this place again!"),
)
PARAPHRASE_EXAMPLE = (
    "Please paraphrase the following sentence. Sentence: Worst restaurant ever!, paraphrase:"
)


@dataclass
class WorkedExample:
    prompt: str
    strengths: list[float]
    completions: list[str]  # completions[i] at strengths[i]; strength 0 = no steering
    icv: ICV

    @property
    def before(self) -> str:
        return self.completions[self.strengths.index(0.0)]

    def after(self, strength: float | None = None) -> str:
        """The completion at ``strength`` (default: the largest)."""
        strength = max(self.strengths) if strength is None else strength
        return self.completions[self.strengths.index(strength)]

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame({"strength": self.strengths, "completion": self.completions})


def worked_example(
    model,
    prompt: str,
    pairs: Sequence[tuple[str, str]] | ICV,
    strengths: Sequence[float] = (0.1,),
    **generation,
) -> WorkedExample:
    """Complete ``prompt`` without steering and with the ICV of ``pairs`` at each strength
    (one batch, one row per strength). ``generation`` goes to :func:`generate`."""
    icv = pairs if isinstance(pairs, ICV) else extract_icv(model, pairs)
    lambdas = [0.0, *(float(s) for s in strengths if s != 0)]
    steering = ICVSteering(icv, [[lam] for lam in lambdas])
    generation.setdefault("max_new_tokens", 32)
    result = generate(model, [prompt] * len(lambdas), steering, **generation)
    return WorkedExample(prompt, lambdas, result.completions, icv)
