"""I2CL's calibration: only the coefficients ``(a, b)`` learn; the model's weights never get a
gradient (``icl_mech.gradients.frozen_parameters``).

As Li et al. 2025: the demonstrations themselves are the training queries (zero-shot prompts,
their answers the targets), AdamW (lr 0.01, weight decay 1e-3) for 100 epochs of minibatches of
2, the learning rate warmed up over the first 5% of steps then cosine-decayed, and Gaussian
noise (0.001 times each output's norm) on every injected output for robustness. The loss is the
cross-entropy of the scored answer tokens (:mod:`icl_mech.scoring`: whitespace-only tokens
teacher-forced before the first content token), so a task whose answers start with a bare
space is trained on what it is scored on.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Sequence

import torch
from tqdm import tqdm

from icl_mech import scoring, validate
from icl_mech.context_vectors.i2cl import ContextVectors
from icl_mech.context_vectors.injection import InjectContext
from icl_mech.errors import IclMechError
from icl_mech.gradients import frozen_parameters
from icl_mech.hooks import attach
from icl_mech.icl_prompt import ICLPrompt
from icl_mech.prompt_batch import PromptBatch
from icl_mech.prompts import Demonstration, Task

WARMUP = 0.05  # of the steps


def schedule(step: int, warmup: int, total: int) -> float:
    """The learning-rate factor: linear warm-up, then cosine decay to 0 at ``total``."""
    if warmup > 0 and step <= warmup:
        return step / warmup
    return (1 + math.cos(math.pi * step / total)) / 2


def calibrate(
    model,
    vectors: ContextVectors,
    task: Task,
    demonstrations: Sequence[Demonstration],
    *,
    epochs: int = 100,
    lr: float = 0.01,
    weight_decay: float = 1e-3,
    noise: float = 1e-3,
    batch_size: int = 2,
    seed: int = 0,
    progress: bool | str = False,
) -> ContextVectors:
    """The context vectors with learned coefficients; ``provenance["calibration"]`` holds the
    settings, the mean loss per epoch, the steps and the seconds it took."""
    epochs = validate.count(epochs, "calibrate epochs")
    batch_size = validate.count(batch_size, "calibrate batch_size")
    lr = validate.real(lr, "calibrate lr", positive=True)
    weight_decay = validate.real(weight_decay, "calibrate weight_decay")
    noise = validate.real(noise, "calibrate noise")
    if weight_decay < 0 or noise < 0:
        raise IclMechError(
            f"calibrate: weight_decay and noise must be >= 0, got {weight_decay} and {noise}"
        )
    if len(demonstrations) < batch_size:
        raise IclMechError(
            f"calibrate: {len(demonstrations)} demonstration(s) for minibatches of {batch_size}; "
            "give more demonstrations or a smaller batch_size"
        )
    vectors.check_fits(model)
    prompts = [ICLPrompt.zero_shot(task, d) for d in demonstrations]
    golds = scoring.golds(model, prompts)
    coefficients = vectors.coefficients.clone().float().requires_grad_(True)
    optimizer = torch.optim.AdamW([coefficients], lr=lr, weight_decay=weight_decay)
    per_epoch = len(prompts) // batch_size
    total = epochs * per_epoch
    warmup = int(WARMUP * total)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: schedule(step, warmup, total)
    )
    rng = random.Random(seed)
    generator = torch.Generator().manual_seed(seed)
    values = vectors.values.to(model.cfg.device)
    inject = InjectContext(values, coefficients, vectors.layers, noise=noise, generator=generator)
    losses, start = [], time.perf_counter()
    bar = tqdm(range(epochs), desc=progress if isinstance(progress, str) else "calibrate",
               disable=not progress, leave=False)  # fmt: skip
    with frozen_parameters(model), attach(model, inject):
        for _ in bar:
            order = list(range(len(prompts)))
            rng.shuffle(order)
            epoch = []
            for step in range(per_epoch):
                rows = order[step * batch_size : (step + 1) * batch_size]
                loss = answer_loss(model, [prompts[i] for i in rows], [golds[i] for i in rows])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                scheduler.step()
                epoch.append(float(loss.detach()))
            losses.append(sum(epoch) / len(epoch))
    return vectors.with_coefficients(
        coefficients,
        epochs=epochs, lr=lr, weight_decay=weight_decay, noise=noise, batch_size=batch_size,
        seed=seed, steps=total, losses=losses, seconds=time.perf_counter() - start,
    )  # fmt: skip


def answer_loss(model, prompts: Sequence[ICLPrompt], golds: Sequence[scoring.Gold]):
    """Mean over rows of −log P(scored answer tokens | prompt), teacher-forced."""
    batch = PromptBatch.from_prompts(model, prompts)
    forced = scoring.forced_tokens(golds).to(batch.tokens.device)
    tokens = torch.cat([batch.tokens, forced], dim=1)
    mask = torch.cat([batch.attention_mask, torch.ones_like(forced)], dim=1)
    logits = model(tokens, attention_mask=mask)[:, batch.seq_len - 1 :]
    log_probs = logits.float().log_softmax(-1)
    total = log_probs.new_zeros(())
    for row, gold in enumerate(golds):
        steps = torch.arange(len(gold.tokens), device=log_probs.device)
        target = torch.tensor(gold.tokens, device=log_probs.device)
        total = total - log_probs[row, steps, target].sum()
    return total / len(golds)
