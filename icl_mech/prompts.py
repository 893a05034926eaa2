"""Tasks and their demonstrations: Task → Demonstration, then ICLPrompt
(:mod:`icl_mech.icl_prompt`) → PromptBatch (:mod:`icl_mech.prompt_batch`).

A ``Task`` holds examples and the template that renders them; it samples demonstrations and
splits its examples into disjoint parts (paired tasks by unordered pair).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass

from icl_mech import validate
from icl_mech.errors import IclMechError


@dataclass(frozen=True)
class Demonstration:
    """One example: ``x`` the input text, ``y`` its answer (a label word, or an output)."""

    x: str
    y: str

    def __post_init__(self):
        if not isinstance(self.x, str) or not isinstance(self.y, str):
            raise IclMechError(
                f"Demonstration(x={self.x!r}, y={self.y!r}): x and y must be str; "
                "convert numbers with str()"
            )


@dataclass(frozen=True)
class Task:
    """A named set of examples with the template that renders them.

    ``template`` holds ``{x}``; the answer follows it after ``answer_prefix``. For a
    classification task ``classes`` lists the label words, in class order. ``source`` (the
    file it was read from, if any) is provenance only: it takes no part in equality.
    """

    name: str
    examples: tuple[Demonstration, ...]
    template: str = "{x} ->"
    classes: tuple[str, ...] | None = None
    answer_prefix: str = " "
    separator: str = "\n"
    source: str | None = dataclasses.field(default=None, compare=False, repr=False)

    def __post_init__(self):
        if self.template.count("{x}") != 1:
            raise IclMechError(
                f"task {self.name!r}: template must hold '{{x}}' once, got {self.template!r}"
            )
        _check_answer_boundary(self)
        for example in self.examples:
            if not example.x.strip() or example.y == "":
                raise IclMechError(
                    f"task {self.name!r}: example {example!r} has an empty input or answer"
                )
        if self.classes is not None:
            if len(self.classes) < 2 or len(set(self.classes)) != len(self.classes):
                raise IclMechError(
                    f"task {self.name!r}: classes={self.classes!r}; a classification task needs "
                    "at least 2 distinct label words (with fewer, every score and accuracy is "
                    "trivial). Use classes=None for an input -> output task"
                )
            unknown = sorted({e.y for e in self.examples} - set(self.classes))
            if unknown:
                raise IclMechError(
                    f"task {self.name!r}: labels {unknown} are not among its "
                    f"classes {list(self.classes)}"
                )

    @property
    def is_classification(self) -> bool:
        return self.classes is not None

    @property
    def kind(self) -> str:
        """``"classification"`` (label words) or ``"input->output"``."""
        return "classification" if self.classes is not None else "input->output"

    def provenance(self) -> dict:
        """A JSON-safe record of the task (how settings that hold it serialise): its name, kind,
        size, template, label words, source file and a sha256 of everything that renders it."""
        content = json.dumps([self.template, self.classes, self.answer_prefix, self.separator,
                              [[e.x, e.y] for e in self.examples]])  # fmt: skip
        return {
            "name": self.name,
            "kind": self.kind,
            "examples": len(self.examples),
            "template": self.template,
            "classes": None if self.classes is None else list(self.classes),
            "source": self.source,
            "sha256": hashlib.sha256(content.encode()).hexdigest(),
        }

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

    @property
    def answers_repeat(self) -> bool:
        """Whether several examples share an answer: a classification task, or an io task whose
        outputs form a label set (continents, letters, countries). Then a demonstration may show
        the query's answer, as it shows every label; in a one-to-one task (antonyms,
        translations, capitals) that would give the answer away."""
        return self.classes is not None or len({e.y for e in self.examples}) < len(self.examples)

    def leaks(self, example: Demonstration, query: Demonstration | str) -> bool:
        """Whether showing ``example`` next to ``query`` gives the query away: it is the query,
        it shares the query's input, its input or output is the query's answer or input (the
        reverse direction of a pair, or a neighbour in a chain such as next letter), or (unless
        ``answers_repeat``) its output is the query's answer. A string query has no answer."""
        x, y = (query.x, query.y) if isinstance(query, Demonstration) else (query, None)
        if example.x == x or example.y == x or (y is not None and example.x == y):
            return True
        return y is not None and example.y == y and not self.answers_repeat

    def groups(self) -> list[list[Demonstration]]:
        """The examples in groups that a split never separates: the same input, or the two
        directions of a pair (x → y and y → x: split by unordered pair). In example order."""
        parent = list(range(len(self.examples)))

        def root(i: int) -> int:
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = parent[i]
            return i

        first: dict = {}
        for i, e in enumerate(self.examples):
            keys = [("x", e.x)] if self.classes is not None else [("x", e.x), frozenset((e.x, e.y))]
            for key in keys:
                if key in first:
                    parent[root(i)] = root(first[key])
                else:
                    first[key] = i
        grouped: dict[int, list[Demonstration]] = {}
        for i, e in enumerate(self.examples):
            grouped.setdefault(root(i), []).append(e)
        return list(grouped.values())

    def split(self, n_test: int, seed: int = 0) -> tuple["Task", "Task"]:
        """(pool, test): a seeded shuffle; the test part is class-balanced when possible.

        Exactly ``n_test`` test examples (more than the task has is an ``IclMechError`` naming
        the shortfall); when a class runs out before that, the rest come from the other classes
        and an ``IclMechWarning`` says the test part is not balanced. The two directions of a
        pair (x → y, y → x) and examples with the same input land in the same part (``groups``):
        when only whole groups would overshoot ``n_test``, one member goes to the test part and
        its group's other members to neither part.
        """
        seed = validate.seed(seed, f"task {self.name!r}: split seed")
        n = len(self.examples)
        if validate.is_integer(n_test) and n_test > n:
            raise IclMechError(
                f"task {self.name!r}: split(n_test={n_test}) asks for {n_test - n} more test "
                f"examples than the task's {n}"
            )
        n_test = validate.count(n_test, f"task {self.name!r}: split n_test", maximum=n)
        order = list(self.examples)
        random.Random(seed).shuffle(order)
        if self.classes is None:
            chosen = order
        else:
            per_class = {c: [e for e in order if e.y == c] for c in self.classes}
            chosen = [e for group in zip(*per_class.values()) for e in group]
            if n_test > len(chosen):
                validate.warn(
                    f"task {self.name!r}: split({n_test}) is not class-balanced: the smallest "
                    f"class has {min(map(len, per_class.values()))} examples, so the test part "
                    f"is balanced up to {len(chosen)} and takes the rest from larger classes"
                )
                balanced = {id(e) for e in chosen}
                chosen += [e for e in order if id(e) not in balanced]
        group_of = {id(e): k for k, group in enumerate(self.groups()) for e in group}
        size = {k: 0 for k in set(group_of.values())}
        for e in self.examples:
            size[group_of[id(e)]] += 1
        members: dict[int, list[Demonstration]] = {}
        for e in chosen:
            members.setdefault(group_of[id(e)], []).append(e)
        test: list[Demonstration] = []
        used: set[int] = set()
        for fits_only in (True, False):  # whole groups first, then one member of a group
            for e in chosen:
                k = group_of[id(e)]
                if len(test) == n_test:
                    break
                if k not in used and (size[k] <= n_test - len(test) or not fits_only):
                    test += members[k][: n_test - len(test)]
                    used.add(k)
        pool = [e for e in order if group_of[id(e)] not in used]
        if len(test) != n_test:  # cannot happen: every group has at least one member
            raise IclMechError(f"task {self.name!r}: split found {len(test)} of {n_test}")
        return self.with_examples(pool), self.with_examples(test)

    def with_examples(self, examples: Sequence[Demonstration]) -> "Task":
        return dataclasses.replace(self, examples=tuple(examples))

    def sample_demonstrations(
        self, n: int, rng: random.Random, exclude: Demonstration | str | None = None
    ) -> list[Demonstration]:
        """``n`` per class for classification tasks (then shuffled), else ``n`` in all.

        ``exclude`` (the query) removes every example that would give it away (``leaks``): the
        query itself, its other direction, any example showing its input, and, where answers do
        not repeat, any example showing its answer.
        """
        n = validate.count(
            n,
            f"task {self.name!r}: sample_demonstrations n",
            hint=" (for a prompt without any, ICLPrompt.zero_shot)",
        )
        allowed = [e for e in self.examples if exclude is None or not self.leaks(e, exclude)]
        left_out = len(self.examples) - len(allowed)
        why = f" ({left_out} left out as they would give away the query {exclude!r})"
        if self.classes is None:
            if len(allowed) < n:
                raise IclMechError(
                    f"task {self.name!r}: {n} demonstrations asked, {len(allowed)} available"
                    + (why if left_out else "")
                )
            return rng.sample(allowed, n)
        chosen: list[Demonstration] = []
        by_class = self.with_examples(allowed).by_class()
        for label in self.classes:
            pool = by_class[label]
            if len(pool) < n:
                raise IclMechError(
                    f"task {self.name!r}: {n} demonstrations of class "
                    f"{label!r} asked, {len(pool)} available" + (why if left_out else "")
                )
            chosen.extend(rng.sample(pool, n))
        rng.shuffle(chosen)
        return chosen


def _check_answer_boundary(task: Task) -> None:
    """A space right before the answer, outside it, merges into the answer's first token."""
    tail = task.template.split("{x}")[1] + task.answer_prefix
    if task.answer_prefix == "" and tail[-1:] in (" ", "\t"):
        kept = task.template.rstrip(" \t")
        raise IclMechError(
            f"task {task.name!r}: template {task.template!r} ends with a space and "
            "answer_prefix is '': tokenizers merge that space into the label word that follows "
            "(' positive' is one token), so the label's positions would belong to the template. "
            f"Move the space: template={kept!r}, answer_prefix={task.template[len(kept) :]!r}"
        )
