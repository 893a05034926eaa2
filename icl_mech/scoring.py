"""How an input -> output answer is scored: its first content token, reached greedily.

The rule. The gold answer is tokenised as it follows the prompt, ``answer_prefix + answer``.
Its leading whitespace-only tokens (``bare``: a lone ``' '`` where a tokenizer splits
``" 22"`` into ``' '``, ``'2'``, ``'2'``) carry no content; the scored token is the first
token after them (``content``). A row is correct when the model's greedy continuation
produces the bare tokens (if any) and then the content token. An answer without bare tokens
(``" cold"`` -> ``' cold'``) is scored exactly as by its first token, so such tasks keep their
numbers bit for bit. Exact match of the whole greedy answer stays the second metric
(``icl_mech.task_vectors.generate.exact_match``).

Where a forward gives only the next-token logits (the cached layer sweep, the batched
indirect effect), the rows with bare tokens are run again with those tokens appended after the
prompt (teacher forcing; interventions still act on the prompt's last token only), giving the
logits of every step from the prompt's end to the content token in one pass. This is exact:
greedy decoding that has produced the bare tokens sees precisely that input, so the row is
correct iff every step's argmax is the gold token (``logit_hits``). The probability of the
correct answer is the probability of that whole scored prefix, ``P(bare) * P(content | bare)``
(``logit_probability``): a patch that makes the model skip the space lowers it, which the
conditional ``P(content | bare)`` alone would miss. Rows without bare tokens keep their one
plain pass, so their numbers do not move.

A task whose distinct answers all share the scored tokens could not be told apart by any
score: ``check_answers`` refuses it before any forward pass.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from icl_mech.errors import IclMechError
from icl_mech.icl_prompt import ICLPrompt
from icl_mech.prompt_batch import PromptBatch, class_token_ids
from icl_mech.prompts import Task

__all__ = [
    "Gold",
    "bare_rows",
    "check_answers",
    "forced_tokens",
    "gold",
    "golds",
    "logit_hits",
    "logit_probability",
    "steps",
    "subset",
    "token_hits",
]


@dataclass(frozen=True)
class Gold:
    """A gold answer's scored tokens: ``bare`` (whitespace-only, produced first) and
    ``content`` (the scored token)."""

    answer: str
    bare: tuple[int, ...]
    content: int

    @property
    def tokens(self) -> tuple[int, ...]:
        """What greedy decoding must produce, in order."""
        return (*self.bare, self.content)


def is_bare(tokenizer, token: int) -> bool:
    """A token that decodes to whitespace only (or nothing)."""
    return tokenizer.decode([token]).strip() == ""


def gold(tokenizer, task: Task, answer: str) -> Gold:
    """The scored tokens of ``answer`` after the task's prompt (see the module)."""
    ids = tokenizer.encode(task.answer_prefix + answer, add_special_tokens=False)
    n = 0
    while n < len(ids) and is_bare(tokenizer, ids[n]):
        n += 1
    if n == len(ids):
        raise IclMechError(
            f"task {task.name!r}: the answer {answer!r} (after the answer prefix "
            f"{task.answer_prefix!r}) has no token with content to score; give a non-blank answer"
        )
    return Gold(answer, tuple(ids[:n]), ids[n])


def golds(model, prompts: Sequence[ICLPrompt]) -> list[Gold]:
    """Each prompt's gold answer, scored (io tasks)."""
    out = []
    for p in prompts:
        if p.answer is None:
            raise IclMechError("scoring needs every prompt's query to carry its answer")
        out.append(gold(model.tokenizer, p.task, p.answer))
    return out


def check_answers(model, task: Task) -> None:
    """Refuse a task whose answers the score cannot tell apart: label words sharing their first
    token, or an input -> output task whose distinct answers all have the same scored tokens."""
    if task.is_classification:
        class_token_ids(model.tokenizer, task)  # raises, naming the two label words
        return
    answers = sorted({e.y for e in task.examples})
    scored = {gold(model.tokenizer, task, a).tokens for a in answers}
    if len(answers) > 1 and len(scored) == 1:
        (tokens,) = scored
        token = model.tokenizer.decode([tokens[-1]])
        bare = f" after the whitespace-only {model.tokenizer.decode(list(tokens[:-1]))!r}"
        raise IclMechError(
            f"task {task.name!r}: all {len(answers)} distinct answers (e.g. {answers[:3]}) are "
            f"scored by the same token {token!r}{bare if len(tokens) > 1 else ''} on "
            f"{model.cfg.model_name} (the scored token is the first content token of "
            "answer_prefix + answer), so no accuracy or indirect effect could tell them apart. "
            "Move the shared start into the template or the answer prefix (e.g. "
            f"template={task.template + ' ' + token.strip()!r} with the answers shortened to "
            "what follows it) so the answers begin with different tokens"
        )


def steps(golds: Sequence[Gold]) -> int:
    """Greedy steps needed to reach every row's content token."""
    return max(len(g.tokens) for g in golds)


def bare_rows(golds: Sequence[Gold]) -> list[int]:
    """Rows whose answer starts with bare tokens (they need more than one step)."""
    return [i for i, g in enumerate(golds) if g.bare]


def forced_tokens(golds: Sequence[Gold]) -> Int[Tensor, "batch extra"]:
    """The tokens appended after each prompt for teacher forcing: its bare tokens, right-filled
    with its content token (later positions cannot change earlier logits)."""
    extra = steps(golds) - 1
    rows = [list(g.bare) + [g.content] * (extra - len(g.bare)) for g in golds]
    return torch.tensor(rows, dtype=torch.long).reshape(len(golds), extra)


def _targets(golds: Sequence[Gold], n_steps: int) -> tuple[Tensor, Tensor]:
    """Per row and step: the gold token, and whether the step is scored."""
    if n_steps < steps(golds):
        raise IclMechError(f"scoring needs {steps(golds)} steps per row, got {n_steps}")
    target = torch.zeros(len(golds), n_steps, dtype=torch.long)
    used = torch.zeros(len(golds), n_steps, dtype=torch.bool)
    for row, g in enumerate(golds):
        target[row, : len(g.tokens)] = torch.tensor(g.tokens)
        used[row, : len(g.tokens)] = True
    return target, used


def logit_hits(
    logits: Float[Tensor, "*layer batch step vocab"], golds: Sequence[Gold]
) -> Bool[Tensor, "*layer batch"]:
    """Correct rows from teacher-forced logits (step 0: at the prompt's last token)."""
    predicted = logits.argmax(-1).cpu()
    target, used = _targets(golds, predicted.shape[-1])
    return ((predicted == target) | ~used).all(-1)


def logit_probability(
    logits: Float[Tensor, "batch step vocab"], golds: Sequence[Gold]
) -> Float[Tensor, " batch"]:
    """P(bare tokens, then the content token) from teacher-forced logits."""
    target, used = _targets(golds, logits.shape[-2])
    probabilities = logits.float().softmax(-1)
    picked = probabilities.gather(-1, target.to(logits.device)[..., None])[..., 0].cpu()
    return torch.where(used, picked, torch.ones_like(picked)).prod(-1)


def token_hits(tokens: Int[Tensor, "batch new"], golds: Sequence[Gold]) -> list[bool]:
    """Correct rows from greedy continuations (at least ``steps(golds)`` tokens each)."""
    if tokens.shape[1] < steps(golds):
        raise IclMechError(f"scoring needs {steps(golds)} greedy tokens, got {tokens.shape[1]}")
    return [tuple(row[: len(g.tokens)]) == g.tokens for row, g in zip(tokens.tolist(), golds)]


def subset(batch: PromptBatch, rows: Sequence[int]) -> PromptBatch:
    """The batch's chosen rows (same padded length)."""
    rows = list(rows)
    return dataclasses.replace(
        batch,
        prompts=[batch.prompts[i] for i in rows],
        tokens=batch.tokens[rows],
        attention_mask=batch.attention_mask[rows],
        roles=batch.roles[rows],
        demo_index=batch.demo_index[rows],
        rows=[batch.rows[i] for i in rows],
        demo_labels=[batch.demo_labels[i] for i in rows] if batch.demo_labels else [],
        pieces=[batch.pieces[i] for i in rows] if batch.pieces else [],
    )
