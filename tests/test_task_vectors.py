"""Task vectors on tiny models: extraction, patching, the cached sweep, generation, errors."""

import random

import pytest
import torch
from matplotlib.figure import Figure

from icl_mech import Capture, IclMechError, PromptBatch, attach, make, run, tasks, tiny_model
from icl_mech.activations import last_token_states
from icl_mech.batching import batched
from icl_mech.icl_prompt import ICLPrompt
from icl_mech.runner import reproduce
from icl_mech.task_vectors import (
    AddToResidual,
    ReplaceResidual,
    Settings,
    TaskVector,
    conflicting_tasks,
    draw_dummies,
    evaluate,
    extract,
    greedy,
    mean_difference,
    naive_sweep_logits,
    sample_sets,
    sweep_logits,
)
from icl_mech.task_vectors.evaluate import prepare, splits
from icl_mech.task_vectors.figures import accuracy_bars, conflict_bars, layer_curves
from icl_mech.threads import torch_threads

TOL = 1e-4


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Two threads fight the other jobs on this 2-core machine; one is many times faster."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def task():
    return tasks.load("antonym").with_examples(tasks.load("antonym").examples[:40])


def _sets(task, n_sets=4, seed=0):
    """Demonstration sets of different sizes, so the batch is left-padded."""
    rng = random.Random(seed)
    return [task.sample_demonstrations(2 + i % 3, rng) for i in range(n_sets)]


def _zero_shot_batch(model, task, n=5, offset=30):
    prompts = [ICLPrompt.zero_shot(task, q) for q in task.examples[offset : offset + n]]
    batch = PromptBatch.from_prompts(model, prompts)
    assert batch.attention_mask.eq(0).any(), "the test needs rows of different lengths"
    return batch


def _resid_after(model, tokens, mask, layer):
    """Independent reference: the residual after ``layer``, read in one full forward."""
    point = f"blocks.{layer}.hook_resid_post"
    capture = Capture(point, positions="all")
    with attach(model, capture):
        model(tokens, attention_mask=mask)
    return capture.activations[point]


def test_theta_equals_mean_of_unhooked_states(tiny, task):
    sets = _sets(task)
    dummies = draw_dummies(task, sets, n_dummies=2, seed=1)
    theta = extract(tiny, task, sets, dummies, batch_size=3)
    with torch.no_grad():
        for s, (demos, queries) in enumerate(zip(sets, dummies)):
            for layer in (0, tiny.cfg.n_layers - 1):
                states = []
                for q in queries:
                    alone = PromptBatch.from_prompts(tiny, [ICLPrompt.build(task, demos, q)])
                    resid = _resid_after(tiny, alone.tokens, alone.attention_mask, layer)
                    states.append(resid[0, -1])
                expected = torch.stack(states).mean(0)
                torch.testing.assert_close(theta.at(layer)[s], expected, atol=1e-5, rtol=1e-5)


def test_extraction_batched_equals_unbatched(tiny, task):
    sets = _sets(task, n_sets=5)
    dummies = draw_dummies(task, sets, 2, seed=0)
    together = extract(tiny, task, sets, dummies, batch_size=16)
    one_by_one = extract(tiny, task, sets, dummies, batch_size=1)
    torch.testing.assert_close(together.values, one_by_one.values, atol=1e-5, rtol=1e-5)
    assert together.values.shape == (5, tiny.cfg.n_layers, tiny.cfg.d_model)


def test_patching_theta_of_the_prompt_itself_changes_nothing(tiny, task):
    sets = _sets(task, n_sets=3)
    queries = [[q] for q in task.examples[30:33]]
    prompts = [ICLPrompt.build(task, s, q[0]) for s, q in zip(sets, queries)]
    batch = PromptBatch.from_prompts(tiny, prompts)
    theta = extract(tiny, task, sets, queries)
    with torch.no_grad():
        clean = run(tiny, batch)
        for layer in range(tiny.cfg.n_layers):
            patched = run(tiny, batch, theta.intervention(layer=layer))
            torch.testing.assert_close(patched, clean, atol=1e-5, rtol=1e-5)
        zero = AddToResidual({0: torch.zeros(tiny.cfg.d_model), 2: torch.zeros(tiny.cfg.d_model)})
        torch.testing.assert_close(run(tiny, batch, zero), clean)


def test_replacement_matches_hook_free_reference(tiny, task):
    batch = _zero_shot_batch(tiny, task)
    theta = extract(tiny, task, _sets(task, n_sets=len(batch)))
    layer = 1
    with torch.no_grad():
        patched = run(tiny, batch, theta.intervention(layer=layer))[:, -1]
        resid = _resid_after(tiny, batch.tokens, batch.attention_mask, layer).clone()
        resid[:, -1] = theta.at(layer)
        reference = tiny(resid, start_at_layer=layer + 1, attention_mask=batch.attention_mask)
    torch.testing.assert_close(patched, reference[:, -1], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(patched, run(tiny, batch)[:, -1])


@pytest.mark.parametrize("mode", ["replace", "add"])
@pytest.mark.parametrize("groups", [1, 2])
def test_cached_sweep_equals_naive_per_layer_patching(tiny, task, mode, groups):
    batch = _zero_shot_batch(tiny, task)
    theta = extract(tiny, task, _sets(task, n_sets=len(batch)))
    cached = sweep_logits(tiny, batch, theta.values, mode, strength=0.7, groups=groups)
    naive = naive_sweep_logits(tiny, batch, theta.values, mode, strength=0.7)
    assert cached.shape == (tiny.cfg.n_layers, len(batch), tiny.cfg.d_vocab)
    torch.testing.assert_close(cached, naive, atol=TOL, rtol=0)
    assert not torch.allclose(cached[0], cached[-1])  # each block was patched at its own layer


def test_sweep_of_some_layers_with_a_shared_vector(tiny_llama, task):
    model = tiny_model("llama", n_layers=5)
    batch = _zero_shot_batch(model, task)
    shared = extract(model, task, _sets(task, n_sets=2)).mean()
    layers = [1, 3, 4]
    vectors = shared.values[0, layers]
    cached = sweep_logits(model, batch, vectors, "replace", layers=layers, groups=2)
    naive = naive_sweep_logits(model, batch, vectors, "replace", layers=layers)
    torch.testing.assert_close(cached, naive, atol=TOL, rtol=0)


def test_sweep_batched_equals_unbatched(tiny_llama, task):
    batch = _zero_shot_batch(tiny_llama, task)
    theta = extract(tiny_llama, task, _sets(task, n_sets=len(batch)))
    together = sweep_logits(tiny_llama, batch, theta.values)
    for b, prompt in enumerate(batch.prompts):
        alone = PromptBatch.from_prompts(tiny_llama, [prompt])
        single = sweep_logits(tiny_llama, alone, theta.values[b : b + 1])
        torch.testing.assert_close(single[:, 0], together[:, b], atol=TOL, rtol=0)


def test_greedy_continuation_matches_recomputed_reference(tiny, task):
    batch = _zero_shot_batch(tiny, task, n=3)
    theta = extract(tiny, task, _sets(task, n_sets=3))
    layer, steps = 1, 4
    out = greedy(tiny, batch, theta.intervention(layer=layer), max_new_tokens=steps)
    tokens, mask = batch.tokens, batch.attention_mask
    last = batch.seq_len - 1  # the prompt's last token: the only position patched
    with torch.no_grad():
        for step in range(steps):
            with attach(tiny, ReplaceResidual(theta.at(layer), layer, positions=last)):
                logits = tiny(tokens, attention_mask=mask)[:, -1]
            if step == 0:
                torch.testing.assert_close(out.first_logits, logits, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(logits.argmax(-1), out.tokens[:, step])
            tokens = torch.cat([tokens, logits.argmax(-1, keepdim=True)], dim=1)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)


def test_mean_difference_is_icl_minus_zero_shot(tiny_gpt2, task):
    sets = _sets(task, n_sets=3)
    dummies = draw_dummies(task, sets, 2, seed=0)
    theta = extract(tiny_gpt2, task, sets, dummies)
    delta = mean_difference(tiny_gpt2, theta, task, dummies)
    zero = last_token_states(tiny_gpt2, [ICLPrompt.zero_shot(task, q) for d in dummies for q in d])
    torch.testing.assert_close(delta.values[0], theta.values.mean(0) - zero.mean(0))
    assert delta.provenance["kind"] == "mean-difference"


def test_save_and_load_round_trip_with_provenance(tiny_llama, task, tmp_path):
    theta = extract(tiny_llama, task, _sets(task, n_sets=2), seed=7)
    path = theta.save(tmp_path / "antonym_theta")
    assert path.suffix == ".safetensors" and path.with_suffix(".json").is_file()
    loaded = TaskVector.load(tmp_path / "antonym_theta", model=tiny_llama)
    torch.testing.assert_close(loaded.values, theta.values)
    meta = loaded.provenance
    assert meta["model"] == tiny_llama.cfg.model_name
    assert meta["hook_points"][0] == "blocks.0.hook_resid_post"
    assert meta["layers"] == list(range(tiny_llama.cfg.n_layers))
    assert meta["template"] == task.template and meta["seed"] == 7
    assert meta["icl_mech_version"] and meta["d_model"] == tiny_llama.cfg.d_model
    wider = tiny_model("llama", d_model=96)
    with pytest.raises(IclMechError, match="width 64.*d_model 96"):
        TaskVector.load(path, model=wider)
    with pytest.raises(IclMechError, match="does not exist"):
        TaskVector.load(tmp_path / "missing")


def test_registered_kinds_build_from_data(tiny_llama, task):
    batch = _zero_shot_batch(tiny_llama, task)
    vector = torch.randn(tiny_llama.cfg.d_model)
    item = make("task-vector", vector=vector, layer=1)
    same = ReplaceResidual(vector, 1)
    with torch.no_grad():
        torch.testing.assert_close(run(tiny_llama, batch, item), run(tiny_llama, batch, same))
    assert "layer=1" in repr(item)
    assert isinstance(make("task-vector-add", vectors={0: vector}), AddToResidual)


def test_clear_errors_before_any_forward(tiny_llama, task):
    batch = _zero_shot_batch(tiny_llama, task)
    d = tiny_llama.cfg.d_model
    with pytest.raises(IclMechError, match="layer 7 out of range"):
        run(tiny_llama, batch, ReplaceResidual(torch.zeros(d), 7))
    with pytest.raises(IclMechError, match="width 10"):
        run(tiny_llama, batch, ReplaceResidual(torch.zeros(10), 0))
    with pytest.raises(IclMechError, match="has 2 rows but the batch has 5"):
        run(tiny_llama, batch, ReplaceResidual(torch.zeros(2, d), 0))
    with pytest.raises(IclMechError, match="demonstration set 1 is empty"):
        extract(tiny_llama, task, [task.examples[:2], []])
    with pytest.raises(IclMechError, match="no demonstration sets"):
        extract(tiny_llama, task, [])
    with pytest.raises(IclMechError, match="layer 9 out of range"):
        sweep_logits(tiny_llama, batch, torch.zeros(1, d), layers=[9])
    with pytest.raises(IclMechError, match=r"expected \[batch, layer, d_model\]"):
        sweep_logits(tiny_llama, batch, torch.zeros(3, 12))
    with pytest.raises(IclMechError, match="strictly increasing"):
        sweep_logits(tiny_llama, batch, torch.zeros(2, d), layers=[2, 1])
    with pytest.raises(IclMechError, match="groups"):
        sweep_logits(tiny_llama, batch, torch.zeros(3, d), groups=4)
    theta = extract(tiny_llama, task, _sets(task, n_sets=2))
    with pytest.raises(IclMechError, match="replacement patches one layer"):
        theta.intervention(layers=[0, 1])
    with pytest.raises(IclMechError, match="not 5"):
        theta.at(5)
    with pytest.raises(IclMechError, match="n_dummies"):
        draw_dummies(task, [task.examples[:2]], 0)
    with pytest.raises(IclMechError, match="at least 1 example"):
        sample_sets(task, 2, 0)


def test_apply_patches_only_inside_the_block(tiny_llama, task):
    batch = _zero_shot_batch(tiny_llama, task)
    theta = extract(tiny_llama, task, _sets(task, n_sets=2)).mean()
    with torch.no_grad():
        clean = run(tiny_llama, batch)
        with theta.apply(tiny_llama, layer=1) as hooked:
            inside = hooked(batch.tokens, attention_mask=batch.attention_mask)
        torch.testing.assert_close(inside, run(tiny_llama, batch, theta.intervention(layer=1)))
        torch.testing.assert_close(run(tiny_llama, batch), clean)
    assert not torch.allclose(inside, clean)


def test_protocol_conflicts_and_reproduce_on_tiny(tiny_llama, tmp_path):
    protocol = Settings(
        n_demonstrations=2, n_dev=4, n_test=5, max_new_tokens=2, batch_size=3, groups=2
    )
    names = ["country_capital", "city_country"]
    loaded = [tasks.load(n) for n in names]
    results = evaluate(tiny_llama, loaded, protocol, progress=False)
    table = results.to_frame()
    assert list(table["task"]) == names
    for task, result in zip(loaded, results.tasks):
        train, dev, test = splits(task, protocol)
        # the chosen layer: the earliest argmax of a dev curve made by full patched forwards
        dev_data = prepare(tiny_llama, task, train, dev.examples, protocol, protocol.seed + 11)
        hits = torch.zeros(tiny_llama.cfg.n_layers)
        for index, batch in batched(tiny_llama, dev_data.zero_shot, 2):
            logits = naive_sweep_logits(tiny_llama, batch, dev_data.theta.values[index])
            gold = torch.tensor([dev_data.gold[i].content for i in index])  # no bare tokens here
            hits += (logits.argmax(-1) == gold).float().sum(1)
        dev_curve = (hits / len(dev.examples)).tolist()
        assert result.curve("replace", "dev").accuracy == pytest.approx(dev_curve)
        best = max(range(len(dev_curve)), key=lambda i: (dev_curve[i], -i))
        assert result.layer_replace == best
        # the reported test numbers: per query, an independent greedy run (patched or not)
        test_data = prepare(tiny_llama, task, train, test.examples, protocol, protocol.seed + 12)
        replaced, zero_shot, texts = [], [], []
        for index, batch in batched(tiny_llama, test_data.zero_shot, 4):
            patch = test_data.theta.select(index).intervention(layer=result.layer_replace)
            gold = torch.tensor([test_data.gold[i].content for i in index])
            steps = protocol.max_new_tokens
            patched = greedy(tiny_llama, batch, patch, max_new_tokens=steps)
            replaced += (patched.first_tokens == gold).tolist()
            texts += patched.texts
            zero_shot += (greedy(tiny_llama, batch, max_new_tokens=1).first_tokens == gold).tolist()
        assert list(result.answers["tv_replace"]) == texts  # the same answers, token for token
        assert result.correct["tv_replace"] == replaced
        assert result.correct["baseline"] == zero_shot
        assert result.accuracy["tv_replace"] == pytest.approx(sum(replaced) / len(replaced))
        estimate = result.estimate("tv_replace")
        assert estimate.n == len(test.examples) == len(result.answers)
        assert estimate.low <= estimate.value <= estimate.high
        gain = result.difference("tv_replace", "baseline")
        assert gain.value == pytest.approx((sum(replaced) - sum(zero_shot)) / len(replaced))
    means = results.intervals()
    for condition in ("baseline", "icl", "tv_replace", "tv_add"):
        assert means[condition].value == pytest.approx(table[condition].mean())
        assert means[condition].low <= means[condition].value <= means[condition].high
        row = table.iloc[0]
        assert row[f"{condition}_low"] <= row[condition] <= row[f"{condition}_high"]
    effects = results.effects_frame()
    mean_gain = effects[(effects.task == "mean") & (effects.contrast == "tv_add - baseline")]
    expected = (table["tv_add"] - table["baseline"]).mean()
    assert mean_gain["difference"].iloc[0] == pytest.approx(expected)
    capital = results.tasks[0]
    conflict = conflicting_tasks(
        tiny_llama,
        tasks.load("country_continent"),
        tasks.load("country_capital"),
        capital.layer_replace,
        capital.layer_add,
        protocol,
    )
    frame = conflict.to_frame()
    for row in frame.itertuples():
        hits = conflict.hits_a[row.condition]
        assert len(hits) == conflict.n_queries
        assert row.follows_demonstrations == pytest.approx(sum(hits) / len(hits))
        low, high = row.follows_demonstrations_low, row.follows_demonstrations_high
        assert low <= row.follows_demonstrations <= high
    for figure in (layer_curves(results), accuracy_bars(results), conflict_bars([conflict])):
        assert isinstance(figure, Figure)
    report = reproduce(
        "task-vectors",
        tiny_llama,
        quick=True,
        tasks=("country_capital",),
        n_dev=3,
        n_test=3,
        max_new_tokens=1,
        out=tmp_path,
        progress=False,
    )
    mean = report.headline["mean"]
    assert report.headline["n_tasks"] == 1
    assert mean["tv_replace_ci"][0] <= mean["tv_replace"] <= mean["tv_replace_ci"][1]
    assert "tv_replace - baseline_ci" in mean
    written = {p.name for p in tmp_path.iterdir()}
    assert {
        "task_vectors_layers.png",
        "task_vectors_table.md",
        "task_vectors_conflict.csv",
    } <= written
