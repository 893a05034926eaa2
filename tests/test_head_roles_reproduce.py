"""The head-roles reproduction end to end on a tiny model, its settings and its command line."""

import pytest

from icl_mech import IclMechError, PromptBatch, scoring, tasks, tiny_model
from icl_mech.cli import main
from icl_mech.evaluation import build_prompts, scored_hits
from icl_mech.head_roles import Settings
from icl_mech.runner import reproduce
from icl_mech.threads import torch_threads

TINY = dict(
    io_tasks=("country_capital",), class_tasks=("sentiment",), n_prompts=4, n_dev=4, n_test=6,
    ablation_ks=(1, 2), n_sequences=2, n_tokens=10, window=64, early=10, late=50, span=5,
    map_layers=0,
)  # fmt: skip


@pytest.fixture(scope="module")
def report():
    with torch_threads(1):
        return reproduce("head-roles", tiny_model("llama"), quick=True, progress=False, **TINY)


def test_every_table_and_figure_is_made(report):
    assert set(report.tables) == {"comparison", "effects", "heads", "sets", "ablation",
                                  "token_loss", "residual_map"}  # fmt: skip
    assert set(report.figures) == {"attribution", "induction", "induction_vs_fv", "ablation",
                                   "residual_map"}  # fmt: skip
    comparison = report.tables["comparison"]
    assert list(comparison["task"]) == ["country_capital"]
    assert comparison["forwards_attribution"].iloc[0] < comparison["forwards_exact"].iloc[0]
    heads = report.tables["heads"]
    assert len(heads) == 3 * 4 and heads["rank_fv"].is_unique
    assert "note" in report.headline and "first order" in report.headline["note"]


def test_the_ablation_sets_exclude_the_other_kind(report):
    heads = report.tables["heads"]
    for k in TINY["ablation_ks"]:
        top_fv = set(heads.nsmallest(k, "rank_fv").apply(lambda r: f"L{r.layer}H{r.head}", 1))
        top_induction = set(
            heads.nsmallest(k, "rank_induction").apply(lambda r: f"L{r.layer}H{r.head}", 1)
        )
        sets = report.tables["sets"].set_index(["k", "condition"])["heads"]
        induction, fv = set(sets[(k, "induction")].split()), set(sets[(k, "fv")].split())
        assert len(induction) == len(fv) == k and not induction & fv
        assert not induction & top_fv and not fv & top_induction


def test_no_ablation_is_the_plain_few_shot_accuracy(report):
    """The "none" row equals an independent unpatched run of the same prompts."""
    model = tiny_model("llama")
    task = tasks.load("country_capital")
    pool, test = task.split(TINY["n_test"], 0)
    prompts = build_prompts(pool, Settings().n_demonstrations, test.examples, 0)
    with torch_threads(1):
        hits = scored_hits(model, PromptBatch.from_prompts(model, prompts),
                           scoring.golds(model, prompts))  # fmt: skip
    table = report.tables["ablation"]
    none = table[(table["kind"] == "io") & (table["condition"] == "none")]
    assert none["accuracy"].tolist() == [sum(hits) / len(hits)] * len(TINY["ablation_ks"])
    assert table["accuracy"].between(0, 1).all()
    assert (table["accuracy_low"] <= table["accuracy"]).all()


@pytest.mark.parametrize(
    "overrides, named",
    [
        (dict(late=600), "late=600"),
        (dict(early=5, span=10), "early=5"),
        (dict(ablation_ks=(0, 2)), "ablation_ks"),
        (dict(io_tasks=("sentiment",)), "sentiment"),
        (dict(class_tasks=("antonym",)), "antonym"),
    ],
)
def test_bad_settings_are_refused_before_any_model_work(overrides, named):
    with pytest.raises(IclMechError, match=named):
        Settings.quick(**overrides)


def test_the_command_line_refuses_a_bad_value_in_one_line(capsys):
    assert main(["reproduce", "head-roles", "--quick", "--set", "late=5"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "late=5" in error
