"""``PromptBatch``: left-padded tokens of several ``ICLPrompt``s with every position known.

The whole text of a prompt is tokenised at once (the model sees its natural tokenisation);
each token is mapped back to its segment through character offsets, so every label word,
demonstration, the query and the target q have known positions per row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from icl_mech import display, validate
from icl_mech.errors import IclMechError
from icl_mech.icl_prompt import NO_DEMO, QUERY, ROLES, ICLPrompt
from icl_mech.padding import left_pad_rows, pad_tokens
from icl_mech.prompts import Task


@dataclass
class RowPositions:
    """Token positions of one row of a PromptBatch (indices into the padded sequence)."""

    labels: list[list[int]]  # per demonstration, every token of its label word
    demos: list[list[int]]  # per demonstration, all of its tokens (separator included)
    query: list[int]
    target: int  # q: the last token, where the next token is predicted

    @property
    def label_first(self) -> list[int]:
        return [tokens[0] for tokens in self.labels]


@dataclass
class PromptBatch:
    """Left-padded tokens of several prompts, with every position known.

    ``roles[b, t]`` indexes ``ROLES``; ``demo_index[b, t]`` is the demonstration a token belongs
    to (``QUERY`` for the query, ``NO_DEMO`` for padding and BOS).
    """

    prompts: list[ICLPrompt]
    tokens: Int[Tensor, "batch seq"]
    attention_mask: Int[Tensor, "batch seq"]
    roles: Int[Tensor, "batch seq"]
    demo_index: Int[Tensor, "batch seq"]
    rows: list[RowPositions]
    class_token_ids: Int[Tensor, " n_classes"] | None
    demo_labels: list[list[int]] = field(default_factory=list)  # class index per demonstration
    made_for: dict | None = None  # validate.model_signature of the model it was tokenised for
    pieces: list[list[str]] = field(default_factory=list)  # per row and position: its text

    def __repr__(self) -> str:
        task = self.prompts[0].task
        classes = f", classes={list(task.classes)}" if task.classes else ""
        return (
            f"PromptBatch({len(self)} prompts x {self.seq_len} tokens, task={task.name!r}{classes})"
        )

    def _repr_html_(self) -> str:
        """The first four rows, every token coloured by its role (:mod:`icl_mech.show.tokens`)."""
        return display.html(self)

    @classmethod
    def from_prompts(
        cls, model, prompts: Sequence[ICLPrompt], prepend_bos: bool | None = None
    ) -> "PromptBatch":
        if not prompts:
            raise IclMechError("PromptBatch.from_prompts: no prompts given")
        tokenizer = model.tokenizer
        if prepend_bos is None:
            prepend_bos = bool(model.cfg.default_prepend_bos)
        task = prompts[0].task
        if any(p.task.classes != task.classes for p in prompts):
            raise IclMechError(
                "PromptBatch.from_prompts: prompts of one batch must share their task's classes"
            )
        class_ids = class_token_ids(tokenizer, task) if task.is_classification else None
        encoded = [_encode(tokenizer, p, prepend_bos) for p in prompts]
        ids, token_roles, token_demos, pieces = zip(*encoded)
        tokens, mask = pad_tokens(model, ids, "prompt")  # the one pad rule (icl_mech.padding)
        roles = left_pad_rows(token_roles, ROLES.index("pad"))
        demo_index = left_pad_rows(token_demos, NO_DEMO)
        rows = [_row_positions(roles[b], demo_index[b], p) for b, p in enumerate(prompts)]
        batch = cls(list(prompts), tokens, mask, roles, demo_index, rows, class_ids)
        batch.made_for = validate.model_signature(model)
        batch.pieces = [[""] * (batch.seq_len - len(p)) + list(p) for p in pieces]
        if class_ids is not None:
            batch.demo_labels = [_demo_classes(p) for p in prompts]
            batch._check_label_tokens()
        return batch

    def __len__(self) -> int:
        return self.tokens.shape[0]

    @property
    def seq_len(self) -> int:
        return self.tokens.shape[1]

    @property
    def targets(self) -> Int[Tensor, " batch"]:
        return torch.tensor([row.target for row in self.rows])

    @cached_property
    def gold(self) -> Int[Tensor, " batch"]:
        """Class index of each row's gold answer (classification tasks)."""
        task = self.prompts[0].task
        if any(p.answer is None for p in self.prompts):
            raise IclMechError("gold labels need every prompt's query to carry its answer")
        return torch.tensor([task.class_index(p.answer) for p in self.prompts])

    def mask(self, role: str) -> Bool[Tensor, "batch seq"]:
        """Boolean mask of the tokens of one role (see ``ROLES``), or "target"."""
        if role == "target":
            out = torch.zeros_like(self.tokens, dtype=torch.bool)
            out[torch.arange(len(self)), self.targets] = True
            return out
        if role not in ROLES:
            raise IclMechError(f"unknown role {role!r}; choose one of {ROLES + ('target',)}")
        return self.roles == ROLES.index(role)

    def label_mask(self, first_token_only: bool = False) -> Bool[Tensor, "batch seq"]:
        out = torch.zeros_like(self.tokens, dtype=torch.bool)
        for b, row in enumerate(self.rows):
            for tokens in row.labels:
                out[b, tokens[:1] if first_token_only else tokens] = True
        return out

    def class_logits(
        self, logits: Float[Tensor, "batch seq vocab"]
    ) -> Float[Tensor, "batch n_classes"]:
        if self.class_token_ids is None:
            raise IclMechError("class_logits needs a classification task (one with classes)")
        at_target = logits[torch.arange(len(self)), self.targets]
        return at_target[:, self.class_token_ids]

    def _check_label_tokens(self) -> None:
        for b, row in enumerate(self.rows):
            for tokens, label in zip(row.labels, self.demo_labels[b]):
                got = int(self.tokens[b, tokens[0]])
                want = int(self.class_token_ids[label])
                if got != want:
                    raise IclMechError(
                        f"label word {self.prompts[b].task.classes[label]!r} starts with token "
                        f"{got} in the prompt but with {want} on its own; change the template "
                        "so the label word follows a space"
                    )


def class_token_ids(tokenizer, task: Task) -> Int[Tensor, " n_classes"]:
    """First token of each label word (with the answer prefix); shared first tokens are errors."""
    first = []
    for word in task.classes:
        ids = tokenizer.encode(task.answer_prefix + word, add_special_tokens=False)
        if not word.strip() or not ids or ids[0] == tokenizer.unk_token_id:
            raise IclMechError(
                f"task {task.name!r}: label word {word!r} is not in the tokenizer's vocabulary"
            )
        first.append(ids[0])
    for i, a in enumerate(first):
        for j in range(i):
            if first[j] == a:
                raise IclMechError(
                    f"task {task.name!r}: label words {task.classes[j]!r} and "
                    f"{task.classes[i]!r} share their first token {tokenizer.decode([a])!r}; "
                    "class scores would be identical"
                )
    return torch.tensor(first)


def _encode(tokenizer, prompt: ICLPrompt, prepend_bos: bool):
    """Token ids with, per token, its role code, demonstration index and text."""
    text = prompt.text
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = encoding["input_ids"], encoding["offset_mapping"]
    char_segment = []
    for index, segment in enumerate(prompt.segments):
        char_segment += [index] * len(segment.text)
    token_roles, token_demos = [], []
    pieces = [text[start:end] for start, end in offsets]
    for start, end in offsets:
        segment = prompt.segments[char_segment[min(start, len(text) - 1)]]
        inside = {char_segment[min(c, len(text) - 1)] for c in range(start, max(end, start + 1))}
        labels = [prompt.segments[i].text for i in inside if prompt.segments[i].role == "label"]
        if labels and len(inside) > 1:
            # the label's characters would count as the template's (or the separator's)
            raise IclMechError(
                f"label word {labels[0]!r} merges with neighbouring text into one token "
                f"{text[start:end]!r} of task {prompt.task.name!r}; adjust the template "
                "(a space before the label word belongs in answer_prefix)"
            )
        token_roles.append(ROLES.index(segment.role))
        token_demos.append(segment.demo)
    if prepend_bos:
        ids = [tokenizer.bos_token_id] + ids
        token_roles = [ROLES.index("bos")] + token_roles
        token_demos = [NO_DEMO] + token_demos
        pieces = ["<bos>"] + pieces
    return ids, token_roles, token_demos, pieces


def _row_positions(roles: Tensor, demos: Tensor, prompt: ICLPrompt) -> RowPositions:
    label_code = ROLES.index("label")
    labels, spans = [], []
    for d in range(prompt.n_demonstrations):
        in_demo = demos == d
        spans.append(torch.nonzero(in_demo).flatten().tolist())
        labels.append(torch.nonzero(in_demo & (roles == label_code)).flatten().tolist())
    query = torch.nonzero(demos == QUERY).flatten().tolist()
    return RowPositions(labels, spans, query, target=len(roles) - 1)


def _demo_classes(prompt: ICLPrompt) -> list[int]:
    return [
        prompt.task.class_index(s.text[len(prompt.task.answer_prefix) :])
        for s in prompt.segments
        if s.role == "label"
    ]
