"""Prompts with every position known: demonstrations then a query, as typed segments.

A prompt is a list of typed segments (demonstration input, template text, label word,
separator, query). ``PromptBatch`` (:mod:`icl_mech.prompt_batch`) tokenises the whole text at
once, maps each token back to its segment through character offsets, left-pads the batch and
records, per row, where every label word, demonstration and the query sit. Class scores at the
target position q come from the first token of each label word.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from icl_mech import validate
from icl_mech.errors import IclMechError
from icl_mech.prompts import Demonstration, Task

Role = Literal["input", "template", "label", "separator", "query"]
ROLES: tuple[str, ...] = ("pad", "bos", "input", "template", "label", "separator", "query")
QUERY = -1  # demonstration index of the query's segments
NO_DEMO = -2  # demonstration index of padding and BOS


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
        for demo in demonstrations:
            if not isinstance(demo, Demonstration) or not demo.x.strip() or demo.y == "":
                raise IclMechError(
                    f"task {task.name!r}: demonstration {demo!r} must be a Demonstration with "
                    "a non-empty input and answer"
                )
            if task.is_classification:
                task.class_index(demo.y)
        segments: list[Segment] = []
        for i, demo in enumerate(demonstrations):
            segments += _render_input(task, demo.x, i)
            segments.append(Segment(task.answer_prefix + demo.y, "label", i))
            segments.append(Segment(task.separator, "separator", i))
        query_x, answer = (query.x, query.y) if isinstance(query, Demonstration) else (query, None)
        validate.text(query_x, f"task {task.name!r}: query")
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
