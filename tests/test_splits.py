"""Disjoint splits in every protocol, and no demonstration or dummy that gives its query away.

Parts are compared on three keys: the example, its input, and its unordered pair {x, y} (the
two directions of a paired task must land in the same part). Each protocol check is also run
against a deliberately broken split, so these tests cannot pass vacuously.
"""

import random
import warnings

import pytest

from icl_mech import IclMechError, IclMechWarning, tasks
from icl_mech.anchors.compression_experiment import one_demonstration_each
from icl_mech.anchors.experiment import task_prompts
from icl_mech.anchors.reweighting_experiment import split_for_reweighting
from icl_mech.evaluation import build_prompts
from icl_mech.icv.evaluate import split_pairs
from icl_mech.prompts import Demonstration, Task
from icl_mech.task_vectors.evaluate import splits
from icl_mech.task_vectors.extract import draw_dummies, sample_sets
from icl_mech.task_vectors.settings import Settings

IO = tasks.names("io") + tasks.names("city")
ALL = tasks.names()


def _keys(e: Demonstration) -> set:
    return {("example", e), ("input", e.x), ("pair", frozenset((e.x, e.y)))}


def overlaps(**parts) -> list[tuple]:
    """(part, part, shared key) for every key that two named parts share."""
    owner: dict = {}
    found = []
    for part, examples in parts.items():
        for key in {k for e in examples for k in _keys(e)}:
            if key in owner and owner[key] != part:
                found.append((owner[key], part, key))
            owner.setdefault(key, part)
    return found


def leaks(task: Task, demonstrations, query: Demonstration) -> list[Demonstration]:
    """Demonstrations showing the query's input, or its answer where answers do not repeat."""
    shown = []
    for d in demonstrations:
        strings = {d.x, d.y}
        if query.x in strings or query.y == d.x or (query.y == d.y and not task.answers_repeat):
            shown.append(d)
    return shown


def _overlapping_split(self, n_test, seed=0):
    """A broken Task.split: the pool is the test part itself."""
    order = list(self.examples)
    random.Random(seed).shuffle(order)
    return self.with_examples(order[:n_test]), self.with_examples(order[:n_test])


# --- Task.split -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_task_split_is_disjoint_exact_and_keeps_pairs_together(name):
    task = tasks.load(name)
    n = len(task.examples) // 3
    for seed in range(3):
        pool, test = task.split(n, seed)
        assert len(test.examples) == n
        assert not overlaps(pool=pool.examples, test=test.examples)
        assert set(pool.examples) | set(test.examples) <= set(task.examples)


def test_antonym_is_paired_and_split_by_unordered_pair():
    task = tasks.load("antonym")
    both = {(e.x, e.y) for e in task.examples}
    assert sum((y, x) in both for x, y in both) >= 100  # most pairs go both ways
    for seed in range(5):
        for n in (63, 64, 65):  # odd counts force a single direction to fill the last slot
            pool, test = task.split(n, seed)
            assert len(test.examples) == n
            assert not overlaps(pool=pool.examples, test=test.examples)
            lost = len(task.examples) - len(pool.examples) - n
            assert lost in (0, 1)  # at most the other direction of one pair goes to neither


def test_split_with_only_pairs_left_still_returns_the_count():
    task = Task("pairs", tuple(Demonstration(a, b) for a, b in ("ab", "ba", "cd", "dc", "ef")))
    pool, test = task.split(2, seed=0)
    assert len(test.examples) == 2 and not overlaps(pool=pool.examples, test=test.examples)
    pool, test = task.split(3, seed=1)
    assert len(test.examples) == 3 and not overlaps(pool=pool.examples, test=test.examples)


def test_split_fills_a_small_class_from_the_others_with_a_warning():
    examples = [Demonstration(f"yes {i}", "yes") for i in range(8)]
    examples += [Demonstration(f"no {i}", "no") for i in range(2)]
    task = Task("lopsided", tuple(examples), "{x}:", classes=("yes", "no"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pool, test = task.split(4, seed=0)  # balanced: 2 + 2
    assert sorted(e.y for e in test.examples) == ["no", "no", "yes", "yes"]
    with pytest.warns(IclMechWarning, match=r"not class-balanced: the smallest class has 2"):
        pool, test = task.split(7, seed=0)
    assert len(test.examples) == 7 and len(pool.examples) == 3
    assert not overlaps(pool=pool.examples, test=test.examples)
    with pytest.warns(IclMechWarning):
        assert len(task.split(10, seed=0)[1].examples) == 10
    with pytest.raises(IclMechError, match=r"asks for 1 more test examples than the task's 10"):
        task.split(11)
    with pytest.raises(IclMechError, match="n_test"):
        task.split(0)


# --- demonstrations and dummies never give the query away --------------------------------


@pytest.mark.parametrize("name", IO)
def test_sample_demonstrations_excludes_everything_that_gives_the_query_away(name):
    task = tasks.load(name)
    rng = random.Random(0)
    for query in task.examples:
        demos = task.sample_demonstrations(5, rng, exclude=query)
        assert query not in demos and not leaks(task, demos, query), (query, demos)


def test_exclusion_rule_on_a_chain_and_on_the_reverse_pair():
    letters = tasks.load("next_letter")
    query = Demonstration("c", "d")
    left = {e.x for e in letters.examples} - {
        e.x for e in letters.examples if letters.leaks(e, query)
    }
    assert {"b", "c", "d"} & left == set() and "e" in left  # b -> c, c -> d, d -> e go
    antonym = tasks.load("antonym")
    hot = Demonstration("hot", "cold")
    assert antonym.leaks(Demonstration("cold", "hot"), hot)
    assert not antonym.answers_repeat and tasks.load("country_continent").answers_repeat
    continent = tasks.load("country_continent")  # a shared label is not a leak
    france, spain = (next(e for e in continent.examples if e.x == c) for c in ("France", "Spain"))
    assert not continent.leaks(spain, france)


@pytest.mark.parametrize("name", ["antonym", "next_letter", "country_capital", "sentiment"])
def test_build_prompts_never_shows_the_query(name):
    task = tasks.load(name)
    pool, test = task.split(16, seed=0)
    for source in (task, pool):  # also when the query's own task is the pool
        for prompt, query in zip(build_prompts(source, 3, test.examples, seed=0), test.examples):
            demos, shown_query = _shown(prompt)
            assert shown_query == query and len(demos) == 3 * len(task.classes or [1])
            assert not leaks(task, demos, query), (query, demos)


def test_broken_exclusion_is_caught(monkeypatch):
    task = tasks.load("antonym")
    query = next(e for e in task.examples if (e.x, e.y) == ("hot", "cold"))
    reverse = Demonstration("cold", "hot")
    monkeypatch.setattr(Task, "leaks", lambda self, e, q: e == q)
    shown = [task.sample_demonstrations(5, random.Random(s), exclude=query) for s in range(200)]
    assert any(leaks(task, demos, query) for demos in shown)
    assert any(reverse in demos for demos in shown)


# --- task vectors -------------------------------------------------------------------------


def _task_vector_parts(task, protocol):
    train, dev, test = splits(task, protocol)
    queries = [*dev.examples, *test.examples]
    sets = sample_sets(train, len(queries), protocol.n_demonstrations, 1, queries=queries)
    dummies = draw_dummies(train, sets, protocol.n_dummies, 2, queries=queries)
    return train, dev, test, queries, sets, dummies


@pytest.mark.parametrize("name", ["antonym", "next_letter", "country_capital", "city_language"])
def test_task_vector_splits_and_dummies_are_disjoint(name):
    task, protocol = tasks.load(name), Settings()
    train, dev, test, queries, sets, dummies = _task_vector_parts(task, protocol)
    assert not overlaps(train=train.examples, dev=dev.examples, test=test.examples)
    dummy_pool = {d for ds in dummies for d in ds}
    assert not overlaps(dummies=dummy_pool, dev=dev.examples, test=test.examples)
    for query, demos, drawn in zip(queries, sets, dummies):
        assert len(drawn) == protocol.n_dummies and not leaks(task, demos, query)
        assert not leaks(task, drawn, query)
        assert not any(leaks(task, drawn, d) for d in demos)  # no dummy shows a demonstration


def test_task_vector_splits_refuse_an_overlapping_split(monkeypatch):
    monkeypatch.setattr(Task, "split", _overlapping_split)
    with pytest.raises(IclMechError, match="is in both"):
        splits(tasks.load("antonym"), Settings())


def test_default_dummies_avoid_the_set():
    task = tasks.load("next_letter")
    sets = sample_sets(task, 4, 5, seed=0)
    for demos, drawn in zip(sets, draw_dummies(task, sets, 3, seed=0)):
        assert not any(task.leaks(d, s) for d in drawn for s in demos)
    with pytest.raises(IclMechError, match="one each"):
        draw_dummies(task, sets, 2, queries=task.examples[:1])
    with pytest.raises(IclMechError, match="one each"):
        sample_sets(task, 2, queries=task.examples[:1])


# --- label words are anchors: analysis, re-weighting, compression; ICV --------------------


def _shown(prompt) -> tuple[list[Demonstration], Demonstration]:
    """(demonstrations, query) read back from a prompt's typed segments."""
    prefix = prompt.task.answer_prefix
    inputs = [s.text for s in prompt.segments if s.role == "input"]
    labels = [s.text[len(prefix) :] for s in prompt.segments if s.role == "label"]
    before, after = prompt.task.template.split("{x}")
    query = "".join(s.text for s in prompt.segments if s.role == "query")
    query = query[len(before) : len(query) - len(after)]
    return [Demonstration(x, y) for x, y in zip(inputs, labels)], Demonstration(
        query, prompt.answer
    )


def _prompt_parts(prompts):
    shown = [_shown(p) for p in prompts]
    return {d for demos, _ in shown for d in demos}, [q for _, q in shown]


def _anchor_protocols(task):
    demos, queries = _prompt_parts(task_prompts(task, 24, seed=0))
    yield "analysis", dict(demonstrations=demos, test=queries)
    demos, aux, test = split_for_reweighting(task, 24, 4, seed=0)
    yield "reweighting", dict(demonstrations=demos, auxiliary=aux, test=test)
    demos, queries = _prompt_parts(one_demonstration_each(task, 24, seed=0))
    yield "compression", dict(demonstrations=demos, test=queries)


@pytest.mark.parametrize("name", ["sentiment", "question_type", "topic", "emotion"])
def test_anchor_protocols_are_disjoint(name):
    task = tasks.load(name)
    for protocol, parts in _anchor_protocols(task):
        assert len(parts["test"]) == 24, protocol
        assert not overlaps(**parts), protocol
        assert set(parts["test"]) <= set(task.examples), protocol


def test_anchor_protocol_checks_catch_an_overlapping_split(monkeypatch):
    monkeypatch.setattr(Task, "split", _overlapping_split)
    task = tasks.load("sentiment")
    broken = [protocol for protocol, parts in _anchor_protocols(task) if overlaps(**parts)]
    assert broken == ["analysis", "reweighting", "compression"]


@pytest.mark.parametrize("pair_set", ["negative_positive", "rude_polite"])
def test_icv_demonstrations_and_test_sentences_are_disjoint(pair_set):
    pairs = tasks.load_pairs(pair_set)
    demos, dev, test = split_pairs(pairs, 16, 16, seed=0, n_dev=16)
    parts = [{s for pair in part for s in pair} for part in (demos, dev, test)]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert len(set(pairs)) == len(pairs) and len({s for s, _ in pairs}) == len(pairs)
