"""Prompts with every position known: Task → Demonstration → ICLPrompt → PromptBatch.

A prompt is a list of typed segments (demonstration input, template text, label word,
separator, query). ``PromptBatch`` tokenises the whole text at once (so the model sees its
natural tokenisation), maps each token back to its segment through character offsets, left-pads
the batch and records, per row, where every label word, demonstration and the query sit.

Class scores at the target position q come from the first token of each label word.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from icl_mech.errors import IclMechError

Role = Literal["input", "template", "label", "separator", "query"]
ROLES: tuple[str, ...] = ("pad", "bos", "input", "template", "label", "separator", "query")
QUERY = -1  # demonstration index of the query's segments
NO_DEMO = -2  # demonstration index of padding and BOS


@dataclass(frozen=True)
class Demonstration:
    """One example: ``x`` the input text, ``y`` its answer (a label word, or an output)."""

    x: str
    y: str


@dataclass(frozen=True)
class Task:
    """A named set of examples with the template that renders them.

    ``template`` holds ``{x}``; the answer follows it after ``answer_prefix``. For a
    classification task ``classes`` lists the label words, in class order.
    """

    name: str
    examples: tuple[Demonstration, ...]
    template: str = "{x} ->"
    classes: tuple[str, ...] | None = None
    answer_prefix: str = " "
    separator: str = "\n"

    def __post_init__(self):
        if self.template.count("{x}") != 1:
            raise IclMechError(
                f"task {self.name!r}: template must hold '{{x}}' once, got {self.template!r}"
            )
        if self.classes is not None:
            unknown = sorted({e.y for e in self.examples} - set(self.classes))
            if unknown:
                raise IclMechError(
                    f"task {self.name!r}: labels {unknown} are not among its "
                    f"classes {list(self.classes)}"
                )

    @property
    def is_classification(self) -> bool:
        return self.classes is not None

    def class_index(self, answer: str) -> int:
        if self.classes is None or answer not in self.classes:
            raise IclMechError(
                f"task {self.name!r}: {answer!r} is not one of its classes {self.classes}"
            )
        return self.classes.index(answer)

    def by_class(self) -> dict[str, list[Demonstration]]:
        groups: dict[str, list[Demonstration]] = {c: [] for c in self.classes or ()}
        for example in self.examples:
            groups.setdefault(example.y, []).append(example)
        return groups

    def split(self, n_test: int, seed: int = 0) -> tuple["Task", "Task"]:
        """(pool, test): a seeded shuffle; the test part is class-balanced when possible."""
        order = list(self.examples)
        random.Random(seed).shuffle(order)
        if self.classes is None:
            test, pool = order[:n_test], order[n_test:]
        else:
            rank = {id(e): i for i, e in enumerate(order)}
            per_class = {c: [e for e in order if e.y == c] for c in self.classes}
            interleaved = [e for group in zip(*per_class.values()) for e in group]
            test = interleaved[:n_test]
            taken = {id(e) for e in test}
            pool = sorted((e for e in order if id(e) not in taken), key=lambda e: rank[id(e)])
        return self.with_examples(pool), self.with_examples(test)

    def with_examples(self, examples: Sequence[Demonstration]) -> "Task":
        return dataclasses.replace(self, examples=tuple(examples))

    def sample_demonstrations(
        self, n: int, rng: random.Random, exclude: Demonstration | None = None
    ) -> list[Demonstration]:
        """``n`` per class for classification tasks (then shuffled), else ``n`` in all."""
        if self.classes is None:
            pool = [e for e in self.examples if e != exclude]
            if len(pool) < n:
                raise IclMechError(
                    f"task {self.name!r}: {n} demonstrations asked, {len(pool)} available"
                )
            return rng.sample(pool, n)
        chosen: list[Demonstration] = []
        for label, group in self.by_class().items():
            pool = [e for e in group if e != exclude]
            if len(pool) < n:
                raise IclMechError(
                    f"task {self.name!r}: {n} demonstrations of class "
                    f"{label!r} asked, {len(pool)} available"
                )
            chosen.extend(rng.sample(pool, n))
        rng.shuffle(chosen)
        return chosen


@dataclass(frozen=True)
class Segment:
    text: str
    role: Role
    demo: int  # index of the demonstration it belongs to, QUERY for the query


@dataclass(frozen=True)
class ICLPrompt:
    """Demonstrations then a query, as typed segments; ``answer`` is the query's gold answer."""

    segments: tuple[Segment, ...]
    task: Task
    answer: str | None = None

    @classmethod
    def build(
        cls, task: Task, demonstrations: Sequence[Demonstration], query: Demonstration | str
    ) -> "ICLPrompt":
        if len(demonstrations) == 0:
            raise IclMechError(
                f"task {task.name!r}: empty demonstrations; use "
                "ICLPrompt.zero_shot(task, query) for a prompt without any"
            )
        return cls._assemble(task, demonstrations, query)

    @classmethod
    def zero_shot(cls, task: Task, query: Demonstration | str) -> "ICLPrompt":
        return cls._assemble(task, (), query)

    @classmethod
    def _assemble(cls, task, demonstrations, query) -> "ICLPrompt":
        if task.is_classification:
            for demo in demonstrations:
                task.class_index(demo.y)
        segments: list[Segment] = []
        for i, demo in enumerate(demonstrations):
            segments += _render_input(task, demo.x, i)
            segments.append(Segment(task.answer_prefix + demo.y, "label", i))
            segments.append(Segment(task.separator, "separator", i))
        query_x, answer = (query.x, query.y) if isinstance(query, Demonstration) else (query, None)
        segments += [Segment(s.text, "query", QUERY) for s in _render_input(task, query_x, QUERY)]
        return cls(tuple(s for s in segments if s.text), task, answer)

    @property
    def text(self) -> str:
        return "".join(s.text for s in self.segments)

    @property
    def n_demonstrations(self) -> int:
        return 1 + max((s.demo for s in self.segments), default=-1)


def _render_input(task: Task, x: str, demo: int) -> list[Segment]:
    before, after = task.template.split("{x}")
    return [
        Segment(before, "template", demo),
        Segment(x, "input", demo),
        Segment(after, "template", demo),
    ]


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
        longest = max(len(ids) for ids, _, _ in encoded)
        if longest > model.cfg.n_ctx:
            raise IclMechError(
                f"prompt of {longest} tokens is longer than the context of "
                f"{model.cfg.model_name} ({model.cfg.n_ctx} tokens)"
            )
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        tokens = torch.full((len(prompts), longest), pad_id, dtype=torch.long)
        roles = torch.zeros_like(tokens)
        demo_index = torch.full_like(tokens, NO_DEMO)
        mask = torch.zeros_like(tokens)
        rows = []
        for b, (ids, token_roles, token_demos) in enumerate(encoded):
            offset = longest - len(ids)
            tokens[b, offset:] = torch.tensor(ids)
            roles[b, offset:] = torch.tensor(token_roles)
            demo_index[b, offset:] = torch.tensor(token_demos)
            mask[b, offset:] = 1
            rows.append(_row_positions(roles[b], demo_index[b], prompts[b]))
        batch = cls(list(prompts), tokens, mask, roles, demo_index, rows, class_ids)
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
    """Token ids with, per token, its role code and demonstration index."""
    text = prompt.text
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = encoding["input_ids"], encoding["offset_mapping"]
    char_segment = []
    for index, segment in enumerate(prompt.segments):
        char_segment += [index] * len(segment.text)
    token_roles, token_demos = [], []
    for start, end in offsets:
        segment = prompt.segments[char_segment[min(start, len(text) - 1)]]
        inside = {char_segment[c] for c in range(start, max(end, start + 1))}
        if segment.role == "label" and len(inside) > 1:
            raise IclMechError(
                f"label word {segment.text!r} merges with neighbouring text into "
                f"one token {text[start:end]!r}; adjust the template"
            )
        token_roles.append(ROLES.index(segment.role))
        token_demos.append(segment.demo)
    if prepend_bos:
        ids = [tokenizer.bos_token_id] + ids
        token_roles = [ROLES.index("bos")] + token_roles
        token_demos = [NO_DEMO] + token_demos
    return ids, token_roles, token_demos


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
