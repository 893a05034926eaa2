"""Bring your own data: tasks.from_records / tasks.from_file, their errors, and an end-to-end
run of ICL accuracy and task-vector extraction on a task read from a file (tiny model)."""

import csv
import json
import warnings

import pytest

from icl_mech import IclMechError, IclMechWarning, tasks
from icl_mech.evaluation import icl_accuracy
from icl_mech.task_vectors import extract, sample_sets

ROWS = [{"input": f"word{i}", "output": f"WORD{i}"} for i in range(12)]


def _json(path, rows):
    path.write_text(json.dumps(rows), encoding="utf-8")
    return path


def _jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


def _csv(path, rows, fields=("input", "output")):
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(fields))
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.mark.parametrize(
    "write,suffix",
    [(_json, ".json"), (_jsonl, ".jsonl"), (_csv, ".csv")],
    ids=["json", "jsonl", "csv"],
)
def test_the_three_formats_give_the_same_task(tmp_path, write, suffix):
    task = tasks.from_file(write(tmp_path / f"upper{suffix}", ROWS))
    assert task.name == "upper" and task.template == "{x} ->" and task.classes is None
    assert [(e.x, e.y) for e in task.examples] == [(r["input"], r["output"]) for r in ROWS]


def test_explicit_format_keys_and_template(tmp_path):
    rows = [{"q": f"city{i}", "a": "north" if i % 2 else "south"} for i in range(6)]
    path = _jsonl(tmp_path / "cities.txt", rows)
    with pytest.raises(IclMechError, match="cannot tell the format"):
        tasks.from_file(path)
    task = tasks.from_file(
        path, "Place: {x}\nSide:", input_key="q", output_key="a", format="jsonl", name="side"
    )
    assert task.name == "side" and task.template == "Place: {x}\nSide:"
    assert task.examples[1].y == "north"


def test_classes_given_or_inferred(tmp_path):
    rows = [{"input": f"text {i}", "output": ["good", "bad", "meh"][i % 3]} for i in range(9)]
    path = _json(tmp_path / "reviews.json", rows)
    assert tasks.from_file(path, classes="infer").classes == ("bad", "good", "meh")
    given = tasks.from_file(path, classes=["good", "meh", "bad"])
    assert given.classes == ("good", "meh", "bad") and given.class_index("bad") == 2
    with pytest.raises(IclMechError, match=r"reviews.json, row 2: label 'bad' is not among"):
        tasks.from_file(path, classes=["good", "meh"])
    with pytest.raises(IclMechError, match="'infer' or None"):
        tasks.from_file(path, classes="guess")


def test_from_records_matches_from_file(tmp_path):
    by_records = tasks.from_records("upper", ROWS, answer_prefix=" ", separator="\n")
    assert by_records == tasks.from_file(_json(tmp_path / "upper.json", ROWS))


@pytest.mark.parametrize(
    "content,suffix,message",
    [
        ("", ".json", r"bad.json: the file is empty"),
        ("  \n", ".jsonl", r"bad.jsonl: the file is empty"),
        ("[]", ".json", r"bad.json: no records"),
        ('[{"input": "a", "output": "b"},', ".json", r"bad.json: malformed JSON at line 1"),
        ('{"input": "a", "output": "b"}', ".json", r"expected a JSON list.*format='jsonl'"),
        ('{"input": "a", "output": "b"}\n{"input": "c"', ".jsonl", r"bad.jsonl, line 2: malf"),
        ('{"input": "a", "output": "b"}\n{"input": "c"}', ".jsonl", r"row 2: no key 'output'"),
        ('[{"input": "a", "output": 3}]', ".json", r"row 1: output=3 is int, not a string"),
        ('[{"input": null, "output": "b"}]', ".json", r"row 1: input=None is NoneType"),
        ('["a", "b"]', ".json", r"row 1: expected an object"),
        ('[{"input": " ", "output": "b"}]', ".json", r"row 1: input is empty"),
        ("input,output\na,b\nc,d,e\n", ".csv", r"bad.csv, row 2 \(line 3\): 2 columns"),
        ("input,output\na,b\nc\n", ".csv", r"bad.csv, row 2 \(line 3\): 2 columns"),
        ('input,output\n"a,b\n', ".csv", r"bad.csv, line \d+: malformed CSV"),
        ("text,label\na,b\n", ".csv", r"bad.csv, row 1: no key 'input'.*input_key="),
    ],
)
def test_errors_name_the_file_and_row(tmp_path, content, suffix, message):
    path = tmp_path / f"bad{suffix}"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(IclMechError, match=message):
        tasks.from_file(path)


def test_missing_file_and_unknown_format(tmp_path):
    with pytest.raises(IclMechError, match="no such file"):
        tasks.from_file(tmp_path / "absent.json")
    with pytest.raises(IclMechError, match="format"):
        tasks.from_file(_json(tmp_path / "a.json", ROWS), format="yaml")


def test_duplicates_conflicting_is_an_error_exact_is_dropped(tmp_path):
    conflicting = [*ROWS[:3], {"input": "word1", "output": "other"}]
    with pytest.raises(IclMechError, match=r"row 4: input 'word1' already appears in row 2"):
        tasks.from_file(_jsonl(tmp_path / "dup.jsonl", conflicting))
    exact = [*ROWS[:3], ROWS[1], ROWS[2]]
    with pytest.warns(IclMechWarning, match=r"dropped 2 exact duplicate rows \[4, 5\]"):
        task = tasks.from_file(_jsonl(tmp_path / "same.jsonl", exact))
    assert [e.x for e in task.examples] == ["word0", "word1", "word2"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tasks.from_file(_jsonl(tmp_path / "clean.jsonl", ROWS))


def test_end_to_end_icl_accuracy_and_task_vectors(tmp_path, tiny_llama):
    rows = [{"input": w, "output": w.upper()} for w in ("hot", "cold", "up", "down", "big")]
    rows += [{"input": f"word{i}", "output": f"WORD{i}"} for i in range(11)]
    task = tasks.from_file(_json(tmp_path / "upper.json", rows))
    result = icl_accuracy(tiny_llama, task, n_demonstrations=2, n_test=4, progress=False)
    assert len(result.to_frame()) == 4 and 0 <= result.accuracy <= 1
    vector = extract(tiny_llama, task, sample_sets(task, n_sets=2, n_demonstrations=3))
    assert vector.values.shape == (2, tiny_llama.cfg.n_layers, tiny_llama.cfg.d_model)

    labelled = [{"input": f"sentence {i}", "output": ["yes", "no"][i % 2]} for i in range(8)]
    classified = tasks.from_file(_csv(tmp_path / "yes_no.csv", labelled), classes="infer")
    result = icl_accuracy(tiny_llama, classified, n_demonstrations=1, n_test=4, progress=False)
    assert result.n_classes == 2 and len(result.gold) == 4
