"""The command line never shows a traceback: generated ``--set`` values and flags for every
reproduction, ``check`` and ``sweep``, on the tiny model. Each run exits 0, 1 (cells failed, said
as such) or 2 (bad input, one line), and nothing it prints is a Python traceback. The cases are
drawn from a fixed seed, so CI runs the same ones every time; most are refused before any model
work, a few run a tiny reproduction to the end."""

from __future__ import annotations

import contextlib
import io
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_cli import TINY

from icl_mech import cli
from icl_mech.check import CheckSettings
from icl_mech.runner import REPRODUCTIONS

# values a user might type: ill-typed, out of range, empty, huge, and odd text
BAD = (
    "abc", "1.5", "[1, 2]", "{}", "true", "none", "nan", "inf", "-inf", "-1", "0", "-0.5",
    "4294967295", "4294967296", "1e309", "9" * 40, "", " ", "x" * 300, "a,b,,c", "a:b:c",
    "../x", "\x00", "☃", "1,2,3", "0x10", "--quick",
)  # fmt: skip
FLAGS = ("--quick", "--bogus", "--model=/nonexistent/model", "--model=", "--out=/proc/forbidden",
         "--set", "--set=", "--set==1", "--set=threads")  # fmt: skip
KEEP = "keep"  # the reproduction's own small value: the run goes to the end


def _keys(name: str) -> list[str]:
    return sorted(REPRODUCTIONS[name].settings_class().keys())


@st.composite
def reproduce_case(draw) -> list[str]:
    name = draw(st.sampled_from(sorted(REPRODUCTIONS)))
    values = {**TINY[name], "threads": "1"}
    key = draw(st.sampled_from(_keys(name)))
    value = draw(st.sampled_from((KEEP, *BAD)))
    if value != KEEP:
        values[key] = value
    flags = draw(st.lists(st.sampled_from(FLAGS), max_size=2, unique=True))
    sets = [f"--set={k}={v}" for k, v in values.items()]
    return ["reproduce", name, "--quick", *sets, *flags]


@st.composite
def check_case(draw) -> list[str]:
    key = draw(st.sampled_from(sorted(CheckSettings.keys())))
    value = draw(st.sampled_from(BAD))
    flags = draw(st.lists(st.sampled_from(FLAGS), max_size=2, unique=True))
    return ["check", "--quick", f"--set={key}={value}", *flags]


@st.composite
def sweep_case(draw) -> tuple[str, list[str]]:
    """A grid file's text (seeds and one setting generated) and the sweep's flags."""
    seed = draw(st.sampled_from(("0", "3", "-1", "4294967296", "true", '"a"', "1.5", "[]")))
    key = draw(st.sampled_from(("n_test", "batch_size", "tasks", "seed", "nope")))
    value = draw(st.sampled_from(("2", "0", "-3", '"sentiment"', '["nope"]', "1e400", '""')))
    grid = (
        'method = "anchors"\nmodels = ["tiny-llama"]\ntasks = ["sentiment"]\n'
        f"seeds = [{seed}]\n[settings]\n{key} = {value}\n"
    )
    flags = draw(st.lists(st.sampled_from(("--dry-run", "--executor=nope")), max_size=2))
    return grid, ["--dry-run", *flags]


def _run(argv: list[str]) -> tuple[int, str]:
    """Exit status and everything printed; argparse's own exit counts as its status."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = cli.main(argv)
        except SystemExit as stop:
            status = stop.code if isinstance(stop.code, int) else 2
    return status, out.getvalue() + err.getvalue()


def test_the_command_line_never_shows_a_traceback(monkeypatch, tiny_llama, tmp_path, capsys):
    monkeypatch.setattr(cli, "_model", lambda name: tiny_llama)
    monkeypatch.chdir(tmp_path)  # default --out folders land here, not in the checkout
    seen: Counter = Counter()

    def check(argv: list[str]) -> None:
        status, printed = _run(argv)
        assert status in (0, 1, 2), (argv, status, printed[-500:])
        assert "Traceback" not in printed, (argv, printed[-2000:])
        if status == 2:
            errors = [line for line in printed.splitlines() if "error:" in line]
            assert len(errors) == 1, (argv, printed[-1000:])
        if status == 1:
            assert "failed" in printed, (argv, printed[-1000:])
        seen[status] += 1

    common = settings(
        max_examples=30,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )

    @common
    @given(reproduce_case())
    def reproductions(argv):
        check([*argv, f"--out={tmp_path / 'out'}"] if "--out=" not in " ".join(argv) else argv)

    @settings(common, max_examples=15)
    @given(check_case())
    def checks(argv):
        check(argv)

    @settings(common, max_examples=15)
    @given(sweep_case())
    def sweeps(case):
        grid, flags = case
        path = tmp_path / "grid.toml"
        path.write_text(grid)
        check(["sweep", str(path), f"--store={tmp_path / 'store'}", *flags])

    reproductions()
    checks()
    sweeps()
    with capsys.disabled():
        print(f"\nCLI cases: {sum(seen.values())}; exit codes: {dict(sorted(seen.items()))}")
    assert seen[2] > 0 and seen[0] > 0


@pytest.mark.parametrize("argv", [["--bogus"], ["reproduce"], ["reproduce", "anchors", "--x"]])
def test_argument_errors_are_one_line(argv):
    status, printed = _run(argv)
    assert status == 2 and "Traceback" not in printed
    assert len([line for line in printed.splitlines() if line.strip()]) == 1, printed
