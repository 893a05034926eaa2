import json
from collections import Counter

import pytest

from icl_mech import IclMechError, tasks
from icl_mech.tasks.real import SCHEMAS, load_real

MINIMUM = {"sentiment": 200, "question_type": 180, "topic": 160, "emotion": 160}


@pytest.mark.parametrize("name", list(MINIMUM))
def test_classification_tasks_are_large_and_balanced(name):
    task = tasks.load(name)
    counts = Counter(e.y for e in task.examples)
    assert len(task.examples) >= MINIMUM[name]
    assert set(counts) == set(task.classes)
    assert max(counts.values()) - min(counts.values()) <= 2
    assert len({e.x for e in task.examples}) == len(task.examples)


def test_task_names_are_unique_and_all_load():
    names = tasks.names()
    assert len(names) == len(set(names))
    assert all(tasks.load(name).name == name for name in names)


def test_io_tasks():
    names = tasks.names("io")
    assert len(names) >= 12
    for name in names:
        task = tasks.load(name)
        assert len(task.examples) >= (50 if "letter" in name else 40), name
        assert len({e.x for e in task.examples}) == len(task.examples), name
        assert all(e.x and e.y for e in task.examples)


def test_city_tasks_render_ravel_style_prompts():
    assert len(tasks.load("city_country").examples) >= 50
    paris = next(e for e in tasks.load("city_continent_json").examples if e.x == "Paris")
    from icl_mech import ICLPrompt

    assert ICLPrompt.zero_shot(tasks.load("city_continent_json"), paris).text == (
        '{"city": "Paris", "continent": "'
    )
    assert ICLPrompt.zero_shot(tasks.load("city_continent"), "Paris").text == (
        "Paris is a city on the continent of"
    )


def test_pairs():
    for name in ("negative_positive", "rude_polite"):
        pairs = tasks.load_pairs(name)
        assert len(pairs) >= 50 and all(s != t for s, t in pairs)
    with pytest.raises(IclMechError, match="unknown pair set"):
        tasks.load_pairs("happy_sad")


def test_unknown_task_lists_known_ones():
    with pytest.raises(IclMechError, match="sentiment"):
        tasks.load("sentimnet")


def _write(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return str(path)


@pytest.mark.parametrize("name", list(SCHEMAS))
def test_real_dataset_loaders_on_local_files(name, tmp_path):
    schema = SCHEMAS[name]
    rows = [
        {schema.text: f"text number {i}", schema.label: i % len(schema.names)}
        for i in range(2 * len(schema.names))
    ]
    task = load_real(name, data_files=_write(tmp_path / "rows.jsonl", rows))
    bundled = tasks.load(schema.bundled)
    assert (task.template, task.classes) == (bundled.template, bundled.classes)
    assert [e.y for e in task.examples] == [schema.names[r[schema.label]] for r in rows]
    assert task.examples[0].x == "text number 0"
    assert task.name == name and task.source.endswith("rows.jsonl")  # not the bundled task's


def test_emocontext_turn_columns(tmp_path):
    rows = [{"turn1": "hi", "turn2": "hey", "turn3": "i am so happy", "label": 1}]
    task = load_real("emocontext", data_files=_write(tmp_path / "emo.jsonl", rows))
    assert task.examples[0] == tasks.Demonstration("hi | hey | i am so happy", "happy")


def test_real_dataset_errors(tmp_path):
    with pytest.raises(IclMechError, match="unknown dataset"):
        load_real("imdb")
    bad = _write(tmp_path / "bad.jsonl", [{"words": "x", "label": 0}])
    with pytest.raises(IclMechError, match="needs columns"):
        load_real("sst2", data_files=bad)
    out_of_range = _write(tmp_path / "oor.jsonl", [{"sentence": "x", "label": 7}])
    with pytest.raises(IclMechError, match="label 7"):
        load_real("sst2", data_files=out_of_range)


LABEL_SETS = {  # io tasks whose outputs repeat by design (a label set, not a leak)
    "animal_young",
    "city_to_country",
    "country_continent",
    "country_language",
    "first_letter",
    "last_letter",
    "city_country",
    "city_continent",
    "city_language",
}


@pytest.mark.parametrize("name", tasks.names("io") + tasks.names("city"))
def test_bundled_io_tasks_have_no_duplicates_and_one_output_per_input(name):
    """The audit behind the leakage fix: unique inputs (so one output each), no duplicate
    rows, and outputs repeat only in the label-set tasks. Antonyms go both ways, which the
    split handles (tests/test_splits.py); a one-to-one task shows no answer twice."""
    task = tasks.load(name.removesuffix("_json"))
    inputs = [e.x for e in task.examples]
    assert len(set(inputs)) == len(inputs)
    assert len(set(task.examples)) == len(task.examples)
    assert task.answers_repeat == (name.removesuffix("_json") in LABEL_SETS)
