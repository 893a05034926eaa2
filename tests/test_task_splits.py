"""Task splits (``antonym:hard``) and the difficulty catalogue (``tasks.about``): the hard
splits are clean and disjoint from the common ones, the name form works at every entry point,
and the stated difficulty numbers are what the function computes."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

from icl_mech import IclMechError, cli, tasks
from icl_mech.sweeps import Grid
from icl_mech.task_difficulty import antonym_splits, embedded_tokenizer
from icl_mech.task_vectors import Settings
from icl_mech.tasks import difficulty

ROOT = Path(__file__).resolve().parents[1]
HARD = [n for n in tasks.names() if "hard" in tasks.splits(n)]


def test_the_hard_splits_exist_and_the_default_is_unchanged():
    assert {"antonym", "plural", "past_tense", "comparative"} <= set(HARD)
    assert tasks.splits("antonym") == ["common", "hard"]
    assert tasks.splits("sentiment") == ["common"]
    common = tasks.load("antonym")
    assert common.name == "antonym" and len(common.examples) == 133
    assert tasks.load("antonym", split="common") == common == tasks.load("antonym:common")
    hard = tasks.load("antonym", split="hard")
    assert hard == tasks.load("antonym:hard") and hard.name == "antonym:hard"
    assert len(hard.examples) >= 100 and hard.template == common.template
    assert "antonym:hard" not in tasks.names()  # the default task lists do not move


@pytest.mark.parametrize("name", HARD)
def test_a_hard_split_is_distinct_and_disjoint_from_the_common_one(name):
    hard, common = tasks.load(name, split="hard").examples, tasks.load(name).examples
    pairs = [(e.x, e.y) for e in hard]
    assert len(set(pairs)) == len(pairs)
    assert len({x for x, _ in pairs}) == len(pairs), "one answer per input"
    assert all(x.strip() == x and y.strip() == y for x, y in pairs)  # (moose -> moose)
    assert not {p for p in pairs} & {(e.x, e.y) for e in common}
    assert not {x for x, _ in pairs} & {e.x for e in common}
    assert not {y for _, y in pairs} & {e.y for e in common}


def test_hard_antonyms_share_no_word_with_each_other_or_the_common_split():
    hard = [(e.x, e.y) for e in tasks.load("antonym:hard").examples]
    words = [w for pair in hard for w in pair]
    assert len(words) == len(set(words)), "each word in one pair, one direction"
    common = {w for e in tasks.load("antonym").examples for w in (e.x, e.y)}
    assert not set(words) & common
    assert all(re.fullmatch(r"[a-z]+", w) for w in words)


def test_the_name_form_works_at_every_entry_point():
    assert tasks.resolve("antonym:hard") == tasks.load("antonym", split="hard")
    kept = tasks.checked(("antonym:hard", "antonym"), "here", "tasks", need="io")
    assert kept == ("antonym:hard", "antonym")  # names stay names (not the Task read)
    settings = Settings.quick(tasks=("antonym:hard", "antonym"))
    assert settings.as_dict()["tasks"] == ["antonym:hard", "antonym"]
    plans = cli._plans(["task-vectors"], ["tasks=antonym:hard,plural:hard"], True, None)
    assert plans["task-vectors"].tasks == ("antonym:hard", "plural:hard")
    grid = Grid.load({"method": "task-vectors", "models": ["tiny-llama"], "quick": True,
                      "tasks": ["antonym:hard", "antonym"]})  # fmt: skip
    assert [c.task for c in grid.cells] == ["antonym:hard", "antonym"]


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: tasks.load("antonym:hrad"), "unknown split 'hrad'; did you mean 'hard'?"),
        (lambda: tasks.load("antonym", split="hardd"), "did you mean 'hard'?"),
        (lambda: tasks.resolve("antonym:hrad"), "did you mean 'hard'?"),
        (lambda: tasks.load("sentiment:hard"), "unknown split 'hard' (choose from common)"),
        (lambda: tasks.load("antonim:hard"), "unknown task 'antonim'; did you mean 'antonym'?"),
        (lambda: tasks.load("antonym:hard", split="common"), "names split 'hard'"),
        (lambda: tasks.about("antonym:hrad"), "did you mean 'hard'?"),
        (lambda: Settings.quick(tasks=("antonym:hrad",)), "tasks: task 'antonym': unknown split"),
    ],
)
def test_a_misspelt_split_gets_a_did_you_mean(call, message):
    with pytest.raises(IclMechError, match=re.escape(message)):
        call()


def test_a_misspelt_split_on_the_command_line_is_one_line_and_status_2(capsys):
    argv = ["reproduce", "task-vectors", "--quick", "--set", "tasks=antonym:hrad"]
    assert cli.main(argv) == 2
    assert "did you mean 'hard'?" in capsys.readouterr().err


def test_every_task_and_split_has_a_catalogue_entry():
    names = tasks.split_names()
    assert "antonym:hard" in names and set(tasks.names()) <= set(names)
    assert set(difficulty.SELECTION) == set(names)
    for name in names:
        entry = tasks.about(name)
        assert entry.name == name and entry.examples == len(tasks.load(name).examples)
        assert entry.selection and 0 <= entry.input_single_token <= 1
    assert tasks.about("antonym", split="hard") == tasks.about("antonym:hard")
    assert tasks.about("antonym").input_single_token == 1.0  # every common antonym: one token


@pytest.mark.embedded
def test_the_stated_difficulty_is_what_the_function_computes():
    tokenizer = embedded_tokenizer()
    stored = {row["task"]: row for row in difficulty.catalogue(tokenizer)}
    for name in tasks.split_names():
        entry = tasks.about(name)
        assert entry.difficulty() == difficulty.difficulty(tasks.load(name), tokenizer), name
        assert entry.examples == stored[name]["examples"]
    common, hard = tasks.about("antonym"), tasks.about("antonym:hard")
    assert hard.output_single_token < common.output_single_token
    assert hard.output_tokens_per_word > common.output_tokens_per_word


def test_info_shows_each_tasks_size_and_difficulty(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    for name in tasks.split_names():
        entry = tasks.about(name)
        assert re.search(rf"^  {re.escape(name)} +{entry.examples} ", out, re.M), name
    assert "less common academic" in out


def test_the_readme_quotes_the_committed_antonym_splits():
    table = pd.read_csv(ROOT / "figures" / "antonym_splits.csv")
    assert set(table["split"]) == {"common", "hard"}
    assert set(table["model"]) == {"embedded", "gemma-3-270m"}
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert "figures/antonym_splits.csv" in readme
    for row in table[table["condition"].isin(["icl", "tv_replace"])].itertuples():
        quoted = f"{row.accuracy:.2f} [{row.low:.2f}, {row.high:.2f}]"
        if row.protocol == "icl_accuracy" or row.condition == "tv_replace":
            assert quoted in readme, (row.model, row.split, row.condition, quoted)


def test_the_antonym_splits_table_is_tidy(tiny_llama):
    settings = Settings(tasks=("antonym",), n_dev=4, n_test=6, max_new_tokens=1,
                        test_curves=False)  # fmt: skip
    frame = antonym_splits(tiny_llama, "tiny-llama", n_icl=8, settings=settings)
    assert list(frame.columns) == ["model", "split", "protocol", "condition", "accuracy", "low",
                                   "high", "n", "layer"]  # fmt: skip
    assert list(frame["split"]) == ["common"] * 4 + ["hard"] * 4
    assert list(frame["condition"]) == ["icl", "baseline", "icl", "tv_replace"] * 2
    assert list(frame["n"]) == [8, 6, 6, 6] * 2
    assert (frame["low"] <= frame["accuracy"]).all() and (frame["accuracy"] <= frame["high"]).all()
    assert frame["layer"].notna().sum() == 2  # the replacement layer, chosen on dev
