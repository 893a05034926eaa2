"""The token-loss difference (Olsson et al. 2022; Yin & Steinhardt 2025): the loss of a model at a
late token of a long text minus its loss at an early token. Over natural text the late tokens
are easier (the model learns from its context), so the difference is negative; the more
negative, the more in-context learning. Measured with heads ablated, it says which heads carry
that learning.

- :func:`text_windows`: windows of natural text built from the package's own sentences (the
  inputs of the bundled classification tasks), no download;
- :func:`token_loss_difference`: the per-token loss curve of the windows, with any registry
  items (interventions) attached, as a :class:`TokenLoss`.

Noise: the loss at one token of one window is very noisy, so the early and the late loss are
each the mean over ``span`` consecutive tokens ending at that token (``early - span + 1 ..
early`` and ``late - span + 1 .. late``), then averaged over windows with a bootstrap interval.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import pandas as pd
import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from icl_mech import tasks, validate
from icl_mech.batching import index_batches
from icl_mech.errors import IclMechError
from icl_mech.hooks import Hooked, HookSpec, attach
from icl_mech.stats import Estimate, bootstrap, bootstrap_columns

SOURCE_TASKS = ("sentiment", "topic", "emotion", "question_type")
SEPARATOR = "\n"  # one sentence per line


def sentences() -> list[str]:
    """The distinct inputs of the bundled classification tasks (``SOURCE_TASKS``), in file order.

    A sentence whose text repeats (up to case and spacing) is kept once: a repeat inside a window
    could be copied, which would look like in-context learning."""
    seen, kept = set(), []
    for name in SOURCE_TASKS:
        for example in tasks.load(name).examples:
            key = " ".join(example.x.split()).casefold()
            if key not in seen:
                seen.add(key)
                kept.append(example.x.strip())
    return kept


def _prepends_bos(model) -> bool:
    # the package's BOS rule (icl_mech.models): BOS iff cfg.default_prepend_bos
    return bool(getattr(model.cfg, "default_prepend_bos", True))


def text_windows(
    model, n_windows: int = 8, length: int = 512, seed: int = 0
) -> Int[Tensor, "window length"]:
    """``n_windows`` non-overlapping windows of ``length`` tokens of natural text.

    The distinct sentences of :func:`sentences`, shuffled with ``seed``, are joined one per line
    and tokenised with ``model.tokenizer`` (no special tokens); the stream is cut into
    consecutive windows. Each sentence occurs once in the stream, so no window repeats a
    sentence of itself or of another window. A model that prepends BOS gets BOS as the first of
    the ``length`` tokens of each window. Too little text for the windows asked for is an
    ``IclMechError`` that says how many windows of this length the data gives."""
    n_windows = validate.count(n_windows, "text_windows n_windows")
    bos = int(_prepends_bos(model))
    length = validate.count(length, "text_windows length", minimum=2 + bos)
    seed = validate.seed(seed, "text_windows seed")
    _check_context(model, length)
    order = sentences()
    random.Random(seed).shuffle(order)
    encoded = model.tokenizer([s + SEPARATOR for s in order], add_special_tokens=False)
    stream = [i for ids in encoded["input_ids"] for i in ids]
    per_window = length - bos
    available = len(stream) // per_window
    if n_windows > available:
        raise IclMechError(
            f"text_windows: n_windows={n_windows} windows of length={length} need "
            f"{n_windows * per_window} tokens of text, but the bundled sentences ({len(order)}, "
            f"{len(stream)} tokens for {model.cfg.model_name}) give {available} windows of "
            f"{length} tokens; ask for n_windows <= {available} or shorter windows"
        )
    windows = torch.tensor(stream[: n_windows * per_window], dtype=torch.long)
    windows = windows.view(n_windows, per_window)
    if bos:
        first = torch.full((n_windows, 1), model.tokenizer.bos_token_id, dtype=torch.long)
        windows = torch.cat([first, windows], dim=1)
    return windows


def _check_context(model, length: int) -> None:
    if length > model.cfg.n_ctx:
        raise IclMechError(
            f"windows of {length} tokens are longer than the context of {model.cfg.model_name} "
            f"({model.cfg.n_ctx} tokens); use windows of at most {model.cfg.n_ctx} tokens"
        )


@dataclass(frozen=True)
class TokenLoss:
    """The per-token loss of windows of text, and the late-minus-early difference.

    ``losses[w, j]`` is the cross-entropy of token ``j + 1`` of window ``w`` predicted from
    tokens ``0..j`` (token 0 has no prediction), so the loss at token ``t`` is column ``t - 1``.
    The early (late) loss of a window is the mean loss over tokens ``early - span + 1 .. early``
    (``late - span + 1 .. late``)."""

    losses: Float[Tensor, "window position"]
    early: int
    late: int
    span: int

    def __post_init__(self):
        width = self.losses.shape[-1] if self.losses.ndim == 2 else 0
        if not 1 <= self.span <= self.early < self.late <= width:
            raise IclMechError(
                f"TokenLoss: early={self.early}, late={self.late}, span={self.span} do not fit "
                f"losses of shape {list(self.losses.shape)} (need 1 <= span <= early < late <= "
                "the number of predicted tokens)"
            )

    def _span_mean(self, end: int) -> Float[Tensor, " window"]:
        return self.losses[:, end - self.span : end].mean(dim=1)  # tokens end-span+1 .. end

    @property
    def early_loss(self) -> Float[Tensor, " window"]:
        return self._span_mean(self.early)

    @property
    def late_loss(self) -> Float[Tensor, " window"]:
        return self._span_mean(self.late)

    @property
    def difference(self) -> Float[Tensor, " window"]:
        """Late loss minus early loss, per window (negative: in-context learning)."""
        return self.late_loss - self.early_loss

    @property
    def positions(self) -> Int[Tensor, " position"]:
        """The predicted token of each column of ``losses``: ``1 .. length - 1``."""
        return torch.arange(1, self.losses.shape[1] + 1)

    def estimate(self, **options) -> Estimate:
        """Mean difference over windows with a bootstrap interval over windows (``options``:
        ``n_resamples``, ``confidence``, ``seed`` of :func:`icl_mech.stats.bootstrap`)."""
        return bootstrap(self.difference.numpy(), **options)

    def to_frame(self, **options) -> pd.DataFrame:
        """One row: ``early_loss``, ``late_loss`` and ``difference``, each with ``_low`` and
        ``_high`` (bootstrap over windows, the same draws for all three), ``n`` windows, and the
        ``early``, ``late`` and ``span`` used."""
        row = {"early": self.early, "late": self.late, "span": self.span}
        for name in ("early_loss", "late_loss", "difference"):
            row |= bootstrap(getattr(self, name).numpy(), **options).as_dict(name)
        return pd.DataFrame([row])

    def curve_frame(self, **options) -> pd.DataFrame:
        """Mean loss per predicted token over windows: ``position``, ``loss``, ``loss_low``,
        ``loss_high``, ``n`` (bootstrap over windows)."""
        mean, low, high, n = bootstrap_columns(self.losses.numpy(), **options)
        frame = {"position": self.positions.numpy(), "loss": mean}
        return pd.DataFrame(frame | {"loss_low": low, "loss_high": high, "n": n})


def token_loss_difference(
    model,
    windows: Int[Tensor, "window length"],
    *items: Hooked | HookSpec,
    early: int = 50,
    late: int = 500,
    span: int = 10,
    batch_size: int = 4,
    progress: bool | str = False,
) -> TokenLoss:
    """The per-token loss of ``windows`` (e.g. :func:`text_windows`) with ``items``
    (interventions, probes) attached, one forward per ``batch_size`` windows.

    ``early`` and ``late`` are 0-based token positions in a window (the predicted token);
    each loss is the mean over the ``span`` tokens ending there (see :class:`TokenLoss`).
    ``progress``: a tqdm bar over batches (a string labels it). Everything is checked before
    the first forward pass."""
    windows = _checked_windows(model, windows)
    early, late, span = _checked_positions(windows.shape[1], early, late, span)
    batch_size = validate.count(batch_size, "token_loss_difference batch_size")
    losses = []
    with torch.no_grad(), attach(model, *items):
        for index in index_batches(len(windows), batch_size, progress=progress):
            tokens = windows[index]
            # no padding: without a mask, a left-padding model would hide the leading ids of a
            # window that equal the pad id (often BOS or EOS), taking them for padding
            logits = model(tokens, attention_mask=torch.ones_like(tokens))
            predicted = logits[:, :-1].float()
            targets = tokens[:, 1:].to(predicted.device)
            loss = F.cross_entropy(predicted.transpose(1, 2), targets, reduction="none")
            losses.append(loss.cpu())
    return TokenLoss(torch.cat(losses), early, late, span)


def _checked_windows(model, windows) -> Int[Tensor, "window length"]:
    expected = (
        "expected a 2-D integer tensor [window, length] of token ids, e.g. "
        "text_windows(model, n_windows=8, length=512)"
    )
    if not isinstance(windows, Tensor):
        raise IclMechError(f"windows={validate.shown(windows)}; {expected}")
    if windows.dtype == torch.bool or windows.is_floating_point() or windows.is_complex():
        raise IclMechError(
            f"windows is {validate.shown(windows)}; {expected} (token ids are whole numbers: "
            "use .long() if they are)"
        )
    if windows.ndim != 2:
        fix = "; for one window use windows[None]" if windows.ndim == 1 else ""
        raise IclMechError(f"windows is {validate.shown(windows)}; {expected}{fix}")
    if windows.shape[0] == 0:
        raise IclMechError(f"windows is {validate.shown(windows)}: no window; {expected}")
    _check_context(model, windows.shape[1])
    d_vocab = model.cfg.d_vocab
    if windows.numel() and (int(windows.min()) < 0 or int(windows.max()) >= d_vocab):
        raise IclMechError(
            f"windows hold token ids {int(windows.min())}..{int(windows.max())}, outside "
            f"0..{d_vocab - 1}, the vocabulary of {model.cfg.model_name}; tokenise the text with "
            "this model's tokenizer (text_windows(model, ...))"
        )
    return windows.long().cpu()


def _checked_positions(length: int, early, late, span) -> tuple[int, int, int]:
    span = validate.count(span, "token_loss_difference span")
    early = validate.count(early, "token_loss_difference early")
    late = validate.count(late, "token_loss_difference late")
    if early < span:
        raise IclMechError(
            f"early={early} with span={span}: the early loss would average tokens "
            f"{early - span + 1}..{early}, but the first predicted token is 1; "
            f"use early >= span (e.g. early={span}) or a shorter span"
        )
    if late <= early:
        raise IclMechError(
            f"late={late} is not after early={early}; the difference compares a late token with "
            "an earlier one (e.g. early=50, late=500)"
        )
    if late - span < early:
        raise IclMechError(
            f"late={late}, early={early}, span={span}: the spans {early - span + 1}..{early} and "
            f"{late - span + 1}..{late} overlap; use late >= early + span or a shorter span"
        )
    if length <= late:
        raise IclMechError(
            f"the text is too short: windows of {length} tokens, but late={late} needs at least "
            f"{late + 1} tokens per window (token {late} is the last predicted); build longer "
            f"windows (text_windows(model, length={late + 1})) or use late <= {length - 1}"
        )
    return early, late, span


__all__ = [
    "SOURCE_TASKS",
    "TokenLoss",
    "sentences",
    "text_windows",
    "token_loss_difference",
]
