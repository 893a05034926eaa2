"""The vector atlas: every accuracy it reports equals an independent run, one query at a time,
through plain hooks (not the cached layer sweep nor the batched scorer); its settings refuse
bad values before any model work."""

import json
import warnings

import pytest
import torch

from icl_mech import IclMechError, IclMechWarning, attach, tasks
from icl_mech.batching import encode_text
from icl_mech.interventions import AddVector, Patch
from icl_mech.scoring import golds
from icl_mech.tasks.real import SCHEMAS, load_real
from icl_mech.vector_atlas import Settings, evaluate_task
from icl_mech.vector_atlas.evaluate import _warn_without_icl_gain
from icl_mech.vector_atlas.split import as_io

TINY = dict(n_prompts=3, n_dev=3, n_test=6, n_demonstrations=2, n_dummies=1, inner_last=2, k=3,
            i2cl_shots=2, epochs=2, calibration_batch=1, icv_pairs=4, icv_strengths=(0.1, 0.3),
            batch_size=4, effect_batch_size=2, groups=2)  # fmt: skip


@pytest.fixture(scope="module", params=["country_capital", "sentiment"])
def atlas(request, embedded):
    """A tiny atlas on the embedded model (a random tiny model answers nothing right, so its
    hits could not tell a wrong patch from a right one)."""
    task = tasks.load(request.param)
    return task, evaluate_task(embedded, task, Settings.quick(**TINY))


def _one(model, prompt, gold, items) -> bool:
    """Right or not, one prompt alone: greedy through the bare tokens, then the content token
    (teacher-forced, the items attached to the whole pass)."""
    tokens = torch.tensor([encode_text(model, prompt.text) + list(gold.bare)])
    with torch.no_grad(), attach(model, *items):
        logits = model(tokens)[0, -1 - len(gold.bare) :]
    return logits.argmax(-1).tolist() == list(gold.tokens)


def _items(model, used, query: int, n_prompt: int) -> list:
    if used.vectors is None:
        return list(used.items)
    vector = used.vectors if used.vectors.ndim == 2 else used.vectors[query]
    point = f"blocks.{used.layer}.hook_resid_post"
    position = [n_prompt - 1]  # the prompt's last token, not the teacher-forced ones
    if used.mode == "replace":
        return [Patch(point, vector[used.layer], positions=position)]
    return [AddVector(point, vector[used.layer], positions=position)]


def test_every_accuracy_equals_an_independent_run(atlas, embedded):
    task, result = atlas
    model = embedded
    outcomes = {hit for hits in result.correct.values() for hit in hits}
    assert outcomes == {True, False}, "every hit the same: the comparison would prove nothing"
    assert set(result.used) >= {"zero_shot", "icl", "task_vector", "state_momentum", "i2cl"}
    for condition, used in result.used.items():
        gold = golds(model, used.prompts)
        for i, (prompt, g) in enumerate(zip(used.prompts, gold)):
            n_prompt = len(encode_text(model, prompt.text))
            items = _items(model, used, i, n_prompt)
            assert _one(model, prompt, g, items) == result.correct[condition][i], (
                condition,
                i,
            )


def test_results_are_tidy_and_the_splits_disjoint(atlas):
    task, result = atlas
    assert result.kind == ("classification" if task.is_classification else "io")
    assert all(len(hits) == result.n_test for hits in result.correct.values())
    i2cl = result.extracted["i2cl"]
    shown = {x for x, _ in i2cl.provenance["demonstrations"]}
    queried = {p.text for p in result.used["zero_shot"].prompts}
    assert not any(as_io(task).template.replace("{x}", x) in queried for x in shown)
    methods = {row["method"] for row in result.costs}
    assert {"task_vector", "i2cl", "icv", "zero_shot", "icl"} <= methods
    zero = next(r for r in result.costs if r["method"] == "zero_shot")
    icl = next(r for r in result.costs if r["method"] == "icl")
    i2cl_cost = next(r for r in result.costs if r["method"] == "i2cl")
    assert i2cl_cost["tokens_per_query"] == zero["tokens_per_query"] < icl["tokens_per_query"]
    assert set(result.lens["vector"]) == set(result.vectors)


def test_a_real_dataset_from_local_files_runs_like_the_same_examples_bundled(tiny_llama, tmp_path):
    """The real-text loaders' local files (SST-2's columns: a sentence, an integer label) go
    through the atlas as the bundled task holding the same examples does: the same vectors, the
    same hits; only the name and the source differ."""
    sentiment = tasks.load("sentiment")
    examples = sentiment.examples[:40]
    rows = [{"sentence": e.x, "label": SCHEMAS["sst2"].names.index(e.y)} for e in examples]
    path = tmp_path / "sst2_sample.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    real = load_real("sst2", data_files=str(path))
    settings = Settings.quick(**TINY, io_tasks=(), class_tasks=(real,))
    from_file = evaluate_task(tiny_llama, real, settings)
    bundled = evaluate_task(tiny_llama, sentiment.with_examples(examples), settings)
    assert from_file.task == "sst2" and bundled.task == "sentiment"
    assert from_file.correct == bundled.correct
    assert from_file.vectors.keys() == bundled.vectors.keys()
    for name, values in from_file.vectors.items():
        torch.testing.assert_close(values, bundled.vectors[name], rtol=0, atol=0, msg=name)


def test_settings_refuse_bad_values_before_any_model_work():
    with pytest.raises(IclMechError, match="did you mean 'exact'"):
        Settings.quick(fv_method="exakt")
    with pytest.raises(IclMechError, match="inner_last=9"):
        Settings.quick(inner_last=9)
    with pytest.raises(IclMechError, match="calibration_batch=4"):
        Settings.quick(i2cl_shots=2, calibration_batch=4)
    with pytest.raises(IclMechError, match="no tasks"):
        Settings.quick(io_tasks=(), class_tasks=())
    with pytest.raises(IclMechError, match="momentum_beta"):
        Settings.quick(momentum_beta=1.0)
    with pytest.raises(IclMechError, match="classification"):
        Settings.quick(class_tasks=("antonym",))


def test_a_task_where_icl_shows_no_gain_is_said_out_loud():
    flat = {"icl": [True, False] * 8, "zero_shot": [False, True] * 8}
    with pytest.warns(IclMechWarning, match=r"task 'succ'.*\(n = 16\).*includes zero"):
        _warn_without_icl_gain("succ", flat)
    clear = {"icl": [True] * 16, "zero_shot": [False] * 16}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _warn_without_icl_gain("succ", clear)
