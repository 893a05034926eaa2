"""The runner and the command line: every setting of every reproduction works from the CLI, bad
input is one line and exit status 2, and the demo leaves the checkout clean."""

import json
import re
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from icl_mech import IclMechError, cli, runner
from icl_mech.report import write_table
from icl_mech.runner import REPRODUCTIONS

ROOT = Path(__file__).parent.parent

# small values so that one CLI run per reproduction on a tiny model takes seconds; every other
# setting is passed as its quick value, so every key goes through --set parsing
TINY = {
    "anchors": dict(tasks="sentiment", n_test="2", k="1", batch_size="2"),
    "anchor-applications": dict(
        tasks="sentiment",
        n_test="3",
        epochs="1",
        n_draws="1",
        timing_queries="1",
        diagnosis_tasks="topic",
        diagnosis_n_test="8",
        scan="false",
    ),  # fmt: skip
    "function-vectors": dict(
        tasks="country_capital",
        n_prompts="3",
        n_dev="3",
        n_test="3",
        n_demonstrations="2",
        n_dummies="1",
        k="3",
        batch_size="4",
        effect_batch_size="2",
        groups="2",
    ),  # fmt: skip
    "task-vectors": dict(
        tasks="country_capital",
        pairs="country_continent:country_capital",
        n_dev="3",
        n_test="3",
        n_demonstrations="2",
        max_new_tokens="1",
        batch_size="4",
        groups="2",
    ),  # fmt: skip
    "icv": dict(
        n_test="1",
        n_dev="1",
        n_demonstrations="3",
        strengths="0.1",
        max_new_tokens="3",
        paraphrase_strengths="0.1",
        pair_sets="negative_positive",
    ),  # fmt: skip
    "head-roles": dict(
        io_tasks="country_capital",
        class_tasks="sentiment",
        n_prompts="3",
        n_dev="3",
        n_test="3",
        n_demonstrations="2",
        ablation_ks="1",
        n_sequences="2",
        n_tokens="8",
        n_windows="2",
        window="40",
        early="10",
        late="30",
        span="3",
        map_layers="1",
    ),  # fmt: skip
    "vector-atlas": dict(
        io_tasks="country_capital",
        class_tasks="sentiment",
        n_prompts="3",
        n_dev="3",
        n_test="3",
        n_demonstrations="2",
        n_dummies="1",
        inner_last="2",
        k="3",
        i2cl_shots="1",
        epochs="2",
        calibration_batch="1",
        icv_pairs="3",
        icv_strengths="0.1",
        batch_size="4",
        effect_batch_size="2",
        groups="2",
    ),  # fmt: skip
    "icl-gd": dict(
        linear_steps="20",
        linear_batch="64",
        kernel_steps="20",
        kernel_batch="64",
        eval_every="10",
        monitor_tasks="32",
        test_tasks="64",
    ),  # fmt: skip
}


@pytest.fixture
def tiny_cli(monkeypatch, tiny_llama):
    """The CLI with a tiny model in place of the embedded one."""
    monkeypatch.setattr(cli, "_model", lambda name: tiny_llama)
    return cli


@pytest.mark.parametrize("name", list(REPRODUCTIONS))
def test_every_setting_works_from_the_cli(tiny_cli, name, tmp_path, capsys):
    cls = REPRODUCTIONS[name].settings_class()
    quick = cls.quick()
    values = {key: cli._show(getattr(quick, key)) for key in cls.keys()}
    values.update(TINY[name], threads="1")
    sets = [f"--set={key}={value}" for key, value in values.items()]
    assert cli.main(["reproduce", name, "--quick", "--out", str(tmp_path), *sets]) == 0
    record = json.loads((tmp_path / f"{REPRODUCTIONS[name].prefix}report.json").read_text())
    expected = cls.quick(**{k: cls.parse(k, v) for k, v in values.items()}).as_dict()
    assert record["settings"] == expected
    assert list(tmp_path.glob("*.png")) and list(tmp_path.glob("*.md"))
    assert name in capsys.readouterr().out


@pytest.mark.parametrize("name", list(REPRODUCTIONS))
def test_unknown_setting_is_one_line_and_status_2(name, capsys, monkeypatch):
    monkeypatch.setattr(cli, "_model", lambda name: pytest.fail("model loaded before checks"))
    assert cli.main(["reproduce", name, "--quick", "--set", "n=4"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "'n'" in err and ("seed" in err or "--help" in err)  # the valid ones, or where


@pytest.mark.parametrize(
    "argv, message",
    [
        (["reproduce", "anchors", "--set", "tasks=nope"], "nope"),
        (["reproduce", "anchors", "--set", "n_test=-5"], "n_test"),
        (["reproduce", "anchors", "--set", "n_test=0"], "n_test"),
        (["reproduce", "anchors", "--set", "n_test=many"], "n_test"),
        (["reproduce", "anchors", "--set", "anchors=middle"], "middle"),
        (["reproduce", "task-vectors", "--set", "pairs=a:b"], "pairs"),
        (["reproduce", "icv", "--set", "strengths=nan"], "finite"),
        (["reproduce", "icl-gd", "--set", "threads=0"], "threads"),
        (["reproduce", "icl-gd", "--set", "linear_steps"], "KEY=VALUE"),
        (["reproduce", "anchors", "--out", "/proc/forbidden"], "cannot write"),
        (["demo", "--out", "/proc/forbidden"], "cannot write"),
    ],
)
def test_bad_options_fail_before_any_model_work(argv, message, capsys, monkeypatch):
    monkeypatch.setattr(cli, "_model", lambda name: pytest.fail("model loaded before checks"))
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and message in err and "Traceback" not in err


def test_a_missing_model_folder_is_one_line(capsys):
    assert cli.main(["reproduce", "anchors", "--quick", "--model", "/nonexistent/model"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "/nonexistent/model" in err


def test_help_lists_the_settings_with_their_defaults():
    result = subprocess.run(
        [str(ROOT / ".venv/bin/icl-mech"), "reproduce", "task-vectors", "--help"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0
    assert "n_test" in result.stdout and "32  (quick: 12)" in result.stdout


def test_settings_reject_bad_values_before_model_work():
    for name, bad in [
        ("anchors", dict(n_seeds=-1)),
        ("anchors", dict(tasks=("antonym",))),  # an io task where classification is needed
        ("anchors", dict(target="oracle")),
        ("anchor-applications", dict(lr=0.0)),
        ("task-vectors", dict(tasks=("sentiment",))),
        ("task-vectors", dict(strength=float("inf"))),
        ("icv", dict(pair_sets=())),
        ("icl-gd", dict(test_tasks=0)),
    ]:
        with pytest.raises(IclMechError):
            runner.settings_for(name, quick=True, **bad)


def test_full_and_quick_settings_differ_and_validate():
    for name in REPRODUCTIONS:
        cls = REPRODUCTIONS[name].settings_class()
        assert cls.quick() != cls.full()
        assert cls.full() == cls()


def test_report_json_is_strict_json(tmp_path):
    settings = runner.settings_for("icl-gd", quick=True)
    report = runner.Report("icl-gd", settings, headline={"loss": float("nan"), "n": 3})
    report.write(tmp_path)
    text = (tmp_path / "icl_gd_report.json").read_text()
    record = json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert record["headline"] == {"loss": None, "n": 3}


@pytest.mark.parametrize("index", ["range", "rows", "multi", "named"])
def test_written_tables_have_no_index_columns(tmp_path, index):
    """A RangeIndex, leftover row numbers and concat's unnamed keys are not written; a named
    index level is a column like any other."""
    frame = pd.DataFrame({"condition": ["none", "icv"], "style": [0.25, 0.5]})
    if index == "rows":
        frame = pd.concat([frame.iloc[:1], frame.iloc[1:]])  # index 0, 1, not a RangeIndex
    if index == "multi":
        frame = pd.concat([frame, frame], keys=["a", "b"])
    if index == "named":
        frame = frame.set_index("condition")
    write_table(frame, tmp_path, "table")
    header = (tmp_path / "table.csv").read_text().splitlines()[0]
    assert header == "condition,style"
    markdown = (tmp_path / "table.md").read_text().splitlines()
    assert markdown[0] == "| condition | style |" and markdown[1] == "|---|---|"
    assert markdown[2].startswith("| none | 0.25 |")
    written = pd.read_csv(tmp_path / "table.csv")
    assert list(written.columns) == ["condition", "style"] and written.index.equals(
        pd.RangeIndex(len(written))
    )


def _status() -> set[str]:
    """Changed and untracked paths, outside the source folders the demo never writes to."""
    lines = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=all"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    return {line for line in lines if not line[3:].startswith(("tests/", "icl_mech/"))}


def test_demo_leaves_the_checkout_clean(tiny_cli, monkeypatch, capsys, tmp_path):
    """The demo writes only into its --out folder, with an index of what it made there."""
    monkeypatch.chdir(ROOT)
    for name, values in TINY.items():  # the demo's quick runs, shrunk for a tiny model
        cls = REPRODUCTIONS[name].settings_class()
        small = {k: cls.parse(k, v) for k, v in values.items()}
        monkeypatch.setattr(cls, "QUICK", {**cls.QUICK, **small})
    before = _status()
    assert cli.main(["demo", "--out", str(tmp_path)]) == 0
    assert _status() == before
    written = {p.name for p in tmp_path.iterdir()}
    assert {"icl_accuracy.png", "anchors_flows.png", "icl_gd_report.json"} <= written
    out = capsys.readouterr().out
    assert "sentiment" in out and "task-vectors" in out and "index.md" in out
    index = (tmp_path / "index.md").read_text()
    listed = dict(re.findall(r"^- \[`([^`]+)`\]\(\1\): (.+)$", index, flags=re.MULTILINE))
    assert set(listed) == written - {"index.md"}  # every file it made, nothing else
    assert all(len(line) > 10 for line in listed.values())
    assert listed["anchors_flows.png"].startswith("figure: Information flow per layer")
    assert "## " + runner.ABOUT["icl-gd"].paper in index
