"""One thread policy (``icl_mech.threads``): the cores free when a run starts, or
``ICL_MECH_THREADS``, or a run's ``threads`` setting; the same default for the card, every
reproduction and training. The core count and load average are mocked."""

from __future__ import annotations

import os
import types

import pytest
import torch

from icl_mech import check as check_module
from icl_mech import runner, scoring, threads, tiny_model
from icl_mech.check import CheckSettings
from icl_mech.cli import main
from icl_mech.errors import IclMechError
from icl_mech.gd.data import RegressionTasks
from icl_mech.gd.model import LinearSelfAttentionModel, LSAConfig
from icl_mech.gd.train import TrainConfig, train
from icl_mech.report import ABOUT
from icl_mech.runner import REPRODUCTIONS, Reproduction
from icl_mech.threads import torch_threads


class Machine:
    """A mocked machine: ``cores`` usable cores and ``load`` cores busy (the sampled counters
    off; ``sampled=True``: the counters say ``load`` and the load average says 0)."""

    def __init__(self, monkeypatch, cores: int, load: float | None, sampled: bool = False):
        self.cores, self.load = cores, load
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(self.cores)),
                            raising=False)  # fmt: skip
        monkeypatch.setattr(threads, "busy_now", lambda: self.load if sampled else None)
        monkeypatch.setattr(os, "getloadavg", self._loadavg, raising=False)
        self.sampled = sampled

    def _loadavg(self):
        if self.load is None:
            raise OSError("no load average here")
        load = 0.0 if self.sampled else self.load
        return (load, load, load)


@pytest.fixture(autouse=True)
def no_override(monkeypatch):
    monkeypatch.delenv(threads.ENV, raising=False)


@pytest.fixture
def one_thread():
    """Torch at one thread around the test, so a count set by the code under test shows."""
    with torch_threads(1):
        yield


@pytest.mark.parametrize(
    "cores, load, free",
    [(8, 0.0, 8), (8, 2.6, 5), (8, 2.4, 6), (4, 3.2, 1), (2, 1.0, 1), (2, 7.5, 1), (1, 0.0, 1)],
)
def test_the_policy_is_the_free_cores_and_at_least_one(monkeypatch, cores, load, free):
    for sampled in (False, True):  # the load average where counters are missing, else counters
        Machine(monkeypatch, cores, load, sampled=sampled)
        assert threads.free_cores() == free
        assert threads.default_threads() == free


def test_busy_cores_are_sampled_from_the_kernel_counters():
    now = threads.busy_now(0.05)
    if now is None:
        pytest.skip("no /proc/stat on this system")
    assert 0.0 <= now <= (os.cpu_count() or 1) + 1e-9


def test_without_a_load_average_every_core_is_free(monkeypatch):
    Machine(monkeypatch, 6, None)
    assert threads.default_threads() == 6


def test_without_an_affinity_call_the_cpu_count_is_used(monkeypatch):
    Machine(monkeypatch, 6, 1.0)
    monkeypatch.delattr(os, "sched_getaffinity")
    monkeypatch.setattr(os, "cpu_count", lambda: 3)
    assert threads.default_threads() == 2


def test_the_affinity_counts_not_the_machine_s_cores(monkeypatch):
    Machine(monkeypatch, 2, 0.0)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    assert threads.default_threads() == 2


@pytest.mark.parametrize("value, expected", [("3", 3), (" 12 ", 12), ("1", 1)])
def test_the_environment_overrides_the_policy(monkeypatch, value, expected):
    Machine(monkeypatch, 8, 7.0)  # the policy would say 1
    monkeypatch.setenv(threads.ENV, value)
    assert threads.default_threads() == expected


def test_an_empty_environment_variable_is_unset(monkeypatch):
    Machine(monkeypatch, 8, 3.0)
    monkeypatch.setenv(threads.ENV, "")
    assert threads.default_threads() == 5


@pytest.mark.parametrize("value", ["0", "-2", "two", "1.5", "2 threads", "1e3"])
def test_a_bad_environment_value_names_the_variable_the_value_and_what_is_expected(
    monkeypatch, value
):
    Machine(monkeypatch, 8, 0.0)
    monkeypatch.setenv(threads.ENV, value)
    with pytest.raises(IclMechError) as error:
        threads.default_threads()
    message = str(error.value)
    assert "ICL_MECH_THREADS" in message and repr(value) in message
    assert "whole number from 1 to 1024" in message


def test_the_command_line_reports_a_bad_environment_value(monkeypatch, capsys):
    monkeypatch.setenv(threads.ENV, "many")
    assert main(["info"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("icl-mech: error: ICL_MECH_THREADS='many'")
    assert "from 1 to 1024" in error


def test_check_and_reproductions_have_the_same_default():
    defaults = {CheckSettings().threads, CheckSettings.quick().threads}
    for reproduction in REPRODUCTIONS.values():
        cls = reproduction.settings_class()
        defaults |= {cls().threads, cls.full().threads, cls.quick().threads}
    assert defaults == {None}  # None: the default policy
    assert threads.threads_for(None) == threads.default_threads()


def _fake_reproduction(monkeypatch, name: str, seen: list):
    """Replace reproduction ``name`` by one that records the threads its run sees."""

    def compute(model, settings, progress=True):
        seen.append((torch.get_num_threads(), threads.default_threads()))
        return types.SimpleNamespace()

    original = REPRODUCTIONS[name]
    monkeypatch.setitem(REPRODUCTIONS, name, Reproduction(original.settings, compute, ABOUT[name]))


def test_a_reproduction_with_threads_none_uses_the_policy(monkeypatch, one_thread):
    machine = Machine(monkeypatch, 4, 1.0)
    seen: list = []
    _fake_reproduction(monkeypatch, "icv", seen)

    def busy_loading():  # loading the model raises the load average: read before it
        machine.load = 4.0
        return types.SimpleNamespace(cfg=types.SimpleNamespace(model_name="fake"))

    monkeypatch.setattr(runner, "load_model", busy_loading)
    runner.reproduce("icv", quick=True, progress=False)
    assert seen == [(3, 3)]
    assert torch.get_num_threads() == 1


def test_a_reproduction_with_threads_2_uses_2(monkeypatch, one_thread):
    Machine(monkeypatch, 8, 0.0)  # the policy would say 8
    monkeypatch.setenv(threads.ENV, "5")  # and the environment 5
    seen: list = []
    _fake_reproduction(monkeypatch, "icl-gd", seen)
    runner.reproduce("icl-gd", quick=True, progress=False, threads=2)
    assert seen == [(2, 2)]
    assert torch.get_num_threads() == 1


def test_the_environment_sets_a_reproduction_s_threads(monkeypatch, one_thread):
    Machine(monkeypatch, 8, 0.0)
    monkeypatch.setenv(threads.ENV, "3")
    seen: list = []
    _fake_reproduction(monkeypatch, "icl-gd", seen)
    runner.reproduce("icl-gd", quick=True, progress=False)
    assert seen == [(3, 3)]
    assert torch.get_num_threads() == 1


@pytest.mark.parametrize("setting, expected", [(None, 3), (2, 2)])
def test_the_card_uses_the_same_policy(monkeypatch, one_thread, setting, expected):
    Machine(monkeypatch, 4, 1.0)
    seen: list = []

    def section(model, settings, progress, headlines, figures):
        seen.append(torch.get_num_threads())

    for name in ("_icl", "_anchors", "_task_vectors", "_icv"):
        monkeypatch.setattr(check_module, name, section)
    monkeypatch.setattr(scoring, "check_answers", lambda model, task: None)
    monkeypatch.setattr(check_module, "judge", lambda *args: [])
    model = types.SimpleNamespace(cfg=types.SimpleNamespace(model_name="fake"))
    check_module.check(model, CheckSettings.quick(threads=setting), progress=False)
    assert seen == [expected] * 4
    assert torch.get_num_threads() == 1


def _tiny_training(seen: list):
    tasks = RegressionTasks(d_in=3, n_context=4)
    config = TrainConfig(steps=2, batch_size=8, eval_every=1, eval_tasks=16, progress=False)
    model = LinearSelfAttentionModel(LSAConfig(d_in=3, seed=0))
    train(model, tasks, config, monitor=lambda m: seen.append(torch.get_num_threads()) or {})


def test_training_uses_the_policy_alone_and_the_run_s_count_inside_a_run(monkeypatch, one_thread):
    machine = Machine(monkeypatch, 4, 0.0)
    seen: list = []
    _tiny_training(seen)
    assert set(seen) == {4}
    assert torch.get_num_threads() == 1
    seen.clear()
    with threads.run_threads(2):
        machine.load = 3.0  # the run itself is busy now: its count stands
        _tiny_training(seen)
        assert torch.get_num_threads() == 2
    assert set(seen) == {2}
    assert torch.get_num_threads() == 1


def test_a_run_reads_the_policy_once_at_its_start(monkeypatch, one_thread):
    machine = Machine(monkeypatch, 4, 0.0)
    with threads.fixed() as n:
        machine.load = 4.0
        assert n == 4 and threads.default_threads() == 4
        with threads.run_threads(None) as inner:
            assert inner == 4 and torch.get_num_threads() == 4
    assert threads.default_threads() == 1  # outside any run: read again
    assert torch.get_num_threads() == 1


@pytest.mark.parametrize("bad", [0, -1, True, 1.5])
def test_a_bad_count_is_refused(bad):
    with pytest.raises(IclMechError, match="threads"):
        threads.threads_for(bad)


def test_loading_a_model_lowers_the_threads_to_the_policy_and_never_raises_them(monkeypatch):
    with torch_threads(2):
        monkeypatch.setenv(threads.ENV, "1")
        tiny_model("gpt2", n_layers=1)
        assert torch.get_num_threads() == 1  # two workers on two cores: one each
    with torch_threads(1):
        monkeypatch.setenv(threads.ENV, "2")
        tiny_model("gpt2", n_layers=1)
        assert torch.get_num_threads() == 1  # set lower on purpose: kept
