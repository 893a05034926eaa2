"""Function vectors: head reads and patches, the batched indirect effect, the vector, errors."""

import random

import numpy as np
import pytest
import torch
from matplotlib.collections import PathCollection, QuadMesh
from matplotlib.figure import Figure
from PIL import Image

from icl_mech import Capture, IclMechError, Patch, PromptBatch, attach, kinds, run, tasks
from icl_mech import tiny_model as make_tiny
from icl_mech.backends import TL_MAJOR
from icl_mech.function_vectors import (
    CaptureHeads,
    FunctionVector,
    PatchHeads,
    Settings,
    effect_prompts,
    evaluate,
    function_vector,
    indirect_effects,
    mean_head_outputs,
    naive_indirect_effects,
    shuffle_labels,
    shuffled_twins,
)
from icl_mech.function_vectors.effects import IndirectEffect
from icl_mech.function_vectors.evaluate import demonstrations_of
from icl_mech.function_vectors.figures import accuracy_bars, indirect_effect_map, layer_curves
from icl_mech.function_vectors.results import CONDITIONS
from icl_mech.icl_prompt import ICLPrompt
from icl_mech.plotting import save_figure
from icl_mech.prompts import Demonstration
from icl_mech.runner import reproduce
from icl_mech.threads import torch_threads

TOL = 1e-5


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Two threads fight the other jobs on this 2-core machine; one is many times faster."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def task():
    return tasks.load("antonym").with_examples(tasks.load("antonym").examples[:40])


@pytest.fixture(scope="module")
def biased_gpt2():
    """A tiny GPT-2 whose attention output bias b_O is not zero (it is at initialisation)."""
    model = make_tiny("gpt2", seed=1)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for block in model.blocks:
            block.attn.b_O.copy_(torch.randn(model.cfg.d_model, generator=generator))
    return model


def _batch(model, task, offset=0, n=4):
    """ICL prompts of different lengths (so the batch is left-padded)."""
    rng = random.Random(offset)
    prompts = [
        ICLPrompt.build(task, task.sample_demonstrations(1 + i % 3, rng, exclude=q), q)
        for i, q in enumerate(task.examples[offset : offset + n])
    ]
    batch = PromptBatch.from_prompts(model, prompts)
    assert batch.attention_mask.eq(0).any(), "the test needs rows of different lengths"
    return batch


def _all_heads(model, layer):
    return [(layer, h) for h in range(model.cfg.n_heads)]


def test_heads_are_catalogued():
    assert {"capture-heads", "patch-heads"} <= set(kinds())


def test_patching_a_heads_own_output_back_changes_nothing(tiny, task):
    batch = _batch(tiny, task)
    heads = [(0, 1), (1, 0), (1, 3), (tiny.cfg.n_layers - 1, 2)]
    capture = CaptureHeads(heads)
    with torch.no_grad():
        clean = run(tiny, batch, capture)
        patched = run(tiny, batch, PatchHeads(heads, capture.outputs))
        other = run(tiny, batch, PatchHeads(heads, capture.outputs.flip(0)))
    assert capture.outputs.shape == (len(batch), len(heads), tiny.cfg.d_head)
    torch.testing.assert_close(patched, clean, atol=TOL, rtol=TOL)
    assert not torch.allclose(other[:, -1], clean[:, -1], atol=1e-4)  # the patch does act


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_patching_every_head_equals_patching_the_attention_output(arch, biased_gpt2, task):
    model = biased_gpt2 if arch == "gpt2" else make_tiny("llama")
    target, source = _batch(model, task, offset=0), _batch(model, task, offset=10)
    layer = 1
    heads = CaptureHeads(_all_heads(model, layer))
    attn_out = Capture(f"blocks.{layer}.hook_attn_out", positions="last")
    with torch.no_grad():
        run(model, source, heads, attn_out)
        by_heads = run(model, target, PatchHeads(_all_heads(model, layer), heads.outputs))
        point = f"blocks.{layer}.hook_attn_out"
        by_output = run(model, target, Patch(point, attn_out.activations[point], "last"))
        clean = run(model, target)
    torch.testing.assert_close(by_heads, by_output, atol=TOL, rtol=TOL)
    # the patch acts (a random Hugging Face GPT-2, the 4.x tiny model, moves logits ~1e-5)
    assert (by_heads[:, -1] - clean[:, -1]).abs().max() > 1e-6


def test_grouped_query_heads_each_have_their_own_slice(tiny_llama, task):
    """9 query heads over 3 key/value heads on SmolLM2; here 4 over 2: patching one query head
    leaves its key/value partner's output alone."""
    assert tiny_llama.cfg.n_key_value_heads < tiny_llama.cfg.n_heads
    batch = _batch(tiny_llama, task)
    capture = CaptureHeads(_all_heads(tiny_llama, 2))
    with torch.no_grad():
        run(tiny_llama, batch, PatchHeads([(2, 0)], torch.ones(1, tiny_llama.cfg.d_head)), capture)
    assert torch.allclose(capture.outputs[:, 0], torch.ones(1))
    assert not torch.allclose(capture.outputs[:, 1], torch.ones(1))


def test_batched_indirect_effect_equals_one_head_at_a_time(tiny, task):
    clean, shuffled = effect_prompts(task, 5, n_demonstrations=3, seed=0)
    fast = indirect_effects(tiny, clean, shuffled, batch_size=2)
    slow = naive_indirect_effects(tiny, clean, shuffled, batch_size=2)
    scale = float(slow.effects.abs().max())
    assert scale > 0
    torch.testing.assert_close(fast.effects, slow.effects, atol=1e-4 * scale, rtol=1e-4)
    torch.testing.assert_close(fast.shuffled_probability, slow.shuffled_probability)
    torch.testing.assert_close(fast.mean_outputs, slow.mean_outputs)
    assert fast.top(4) == slow.top(4)
    n_layers = tiny.cfg.n_layers
    assert fast.forwards == 3 + 3 * (n_layers + 2)  # ceil(5/2) means + 3 batches x (L + 2)
    assert slow.forwards == 3 + 3 * (1 + n_layers * tiny.cfg.n_heads)


def test_indirect_effect_of_some_layers(tiny_llama, task):
    clean, shuffled = effect_prompts(task, 3, n_demonstrations=2, seed=1)
    full = indirect_effects(tiny_llama, clean, shuffled, batch_size=3)
    some = indirect_effects(tiny_llama, clean, shuffled, layers=[1, 2], batch_size=2)
    torch.testing.assert_close(some.effects, full.effects[:, 1:], atol=1e-7, rtol=1e-4)
    frame = some.to_frame()
    assert len(frame) == 2 * tiny_llama.cfg.n_heads and set(frame["layer"]) == {1, 2}
    assert (frame["indirect_effect_low"] <= frame["indirect_effect_high"]).all()


def test_function_vector_of_no_heads_is_zero_and_changes_no_logit(tiny, task):
    clean, shuffled = effect_prompts(task, 3, n_demonstrations=2, seed=0)
    effect = indirect_effects(tiny, clean, shuffled)
    batch = _batch(tiny, task)
    for empty in (function_vector(tiny, effect, k=0), function_vector(tiny, effect, heads=[])):
        assert empty.heads == () and torch.equal(empty.values, torch.zeros(tiny.cfg.d_model))
        with torch.no_grad():
            for layer in range(tiny.cfg.n_layers):
                patched = run(tiny, batch, empty.intervention(layer=layer))
                torch.testing.assert_close(patched, run(tiny, batch), atol=0, rtol=0)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_one_head_over_one_prompt_is_its_attention_output_alone(arch, biased_gpt2, task):
    """FV of head (l, h) with the mean over one prompt == that prompt's hook_attn_out at the last
    token, less b_O, with every other head of layer l zero-ablated."""
    model = biased_gpt2 if arch == "gpt2" else make_tiny("llama")
    clean, shuffled = effect_prompts(task, 1, n_demonstrations=3, seed=2)
    effect = indirect_effects(model, clean, shuffled)
    layer, head = 1, 2
    vector = function_vector(model, effect, heads=[(layer, head)])
    others = [(layer, h) for h in range(model.cfg.n_heads) if h != head]
    point = f"blocks.{layer}.hook_attn_out"
    attn_out = Capture(point, positions="last")
    batch = PromptBatch.from_prompts(model, clean)
    ablate = PatchHeads(others, torch.zeros(len(others), model.cfg.d_head))
    with torch.no_grad():
        run(model, batch, ablate, attn_out)
    bias = model.blocks[layer].attn.b_O  # None on a bridged Llama (no bias)
    bias = torch.zeros(model.cfg.d_model) if bias is None else bias
    expected = attn_out.activations[point][0] - bias
    assert float(bias.detach().abs().sum()) > 0 or arch == "llama"
    torch.testing.assert_close(vector.values, expected.detach(), atol=TOL, rtol=TOL)
    torch.testing.assert_close(vector.contributions[0], vector.values)


def test_function_vector_is_the_sum_of_its_heads_and_adds_at_the_last_token(tiny_llama, task):
    clean, shuffled = effect_prompts(task, 4, n_demonstrations=2, seed=0)
    effect = indirect_effects(tiny_llama, clean, shuffled)
    vector = function_vector(tiny_llama, effect, k=3)
    assert list(vector.heads) == effect.top(3)
    singles = [function_vector(tiny_llama, effect, heads=[h]).values for h in vector.heads]
    torch.testing.assert_close(vector.values, torch.stack(singles).sum(0), atol=TOL, rtol=TOL)
    batch = _batch(tiny_llama, task)
    point = "blocks.1.hook_resid_post"
    before, after = Capture(point, positions="all"), Capture(point, positions="all")
    with torch.no_grad():
        run(tiny_llama, batch, before)
        run(tiny_llama, batch, vector.intervention(layer=1, strength=2.0), after)
    delta = after.activations[point] - before.activations[point]
    torch.testing.assert_close(delta[:, -1], 2 * vector.values.expand(len(batch), -1))
    assert float(delta[:, :-1].abs().max()) == 0


def test_function_vector_saves_and_loads_with_provenance(tiny_llama, tiny_gpt2, task, tmp_path):
    clean, shuffled = effect_prompts(task, 3, n_demonstrations=2, seed=0)
    vector = function_vector(tiny_llama, indirect_effects(tiny_llama, clean, shuffled), k=2)
    path = vector.save(tmp_path / "antonym_fv")
    loaded = FunctionVector.load(path, model=tiny_llama)
    assert loaded.heads == vector.heads and torch.equal(loaded.values, vector.values)
    assert loaded.provenance["task"] == "antonym" and loaded.provenance["k"] == 2
    assert loaded.record()["n_heads"] == tiny_llama.cfg.n_heads
    with pytest.raises(IclMechError, match="tiny-gpt2"):
        FunctionVector.load(path, model=tiny_gpt2)  # same width, another model
    wide = make_tiny("llama", d_model=96)
    with pytest.raises(IclMechError, match="width 64"):
        FunctionVector.load(path, model=wide)
    empty = function_vector(tiny_llama, indirect_effects(tiny_llama, clean, shuffled), k=0)
    assert FunctionVector.load(empty.save(tmp_path / "empty")).heads == ()


def test_shuffled_labels_are_a_derangement_of_the_same_demonstrations(task):
    rng = random.Random(0)
    demos = task.examples[:5]
    shuffled = shuffle_labels(demos, rng)
    assert [d.x for d in shuffled] == [d.x for d in demos]
    assert sorted(d.y for d in shuffled) == sorted(d.y for d in demos)
    assert all(a.y != b.y for a, b in zip(shuffled, demos))
    clean, twins = effect_prompts(task, 6, n_demonstrations=4, seed=3)
    assert [demonstrations_of(p) for p in clean] != [demonstrations_of(p) for p in twins]
    for prompt, twin in zip(clean, twins):
        assert twin.answer == prompt.answer and twin.text.endswith(prompt.text.split("\n")[-1])
        query = Demonstration(prompt.text.split("\n")[-1].removesuffix(" ->"), prompt.answer)
        assert not any(task.leaks(d, query) for d in demonstrations_of(twin))
    again = shuffled_twins(clean, seed=5)
    assert [p.answer for p in again] == [p.answer for p in clean]
    assert [[d.x for d in demonstrations_of(p)] for p in again] == [
        [d.x for d in demonstrations_of(p)] for p in clean
    ]


def test_mean_head_outputs_average_the_captured_heads(tiny, task):
    batch = _batch(tiny, task)
    means = mean_head_outputs(tiny, batch.prompts, layers=[0, 2], batch_size=3)
    capture = CaptureHeads(_all_heads(tiny, 2))
    with torch.no_grad():
        run(tiny, batch, capture)
    assert means.shape == (2, tiny.cfg.n_heads, tiny.cfg.d_head)
    torch.testing.assert_close(means[1], capture.outputs.mean(0), atol=TOL, rtol=TOL)


def _no_forward(monkeypatch, model):
    monkeypatch.setattr(model, "forward", lambda *a, **k: pytest.fail("a forward pass ran"))


@pytest.mark.parametrize(
    "heads, message",
    [
        ([(0, 4)], r"head 4, but layer 0 .* has 4 query heads \(0..3\)"),
        ([(0, -1)], "head -1"),
        ([(3, 0)], r"layer 3, outside .* 3 layers"),
        ([(0, 1), (0, 1)], "given twice"),
        ([(0, 1.5)], "not a \\(layer, head\\) pair of ints"),
        ([], "selects no head"),
        ("L0H1", "not a list of heads"),
    ],
)
def test_bad_heads_are_refused_before_any_forward(tiny_llama, task, monkeypatch, heads, message):
    batch = _batch(tiny_llama, task)
    _no_forward(monkeypatch, tiny_llama)
    values = torch.zeros(max(1, len(heads)), tiny_llama.cfg.d_head)
    for item in (lambda: PatchHeads(heads, values), lambda: CaptureHeads(heads)):
        with pytest.raises(IclMechError, match=message):
            with attach(tiny_llama, item(), batch=batch):
                pass


def test_bad_values_and_layers_are_refused(tiny_llama, task, monkeypatch):
    batch = _batch(tiny_llama, task)
    _no_forward(monkeypatch, tiny_llama)
    with pytest.raises(IclMechError, match=r"expected \[2 heads, d_head=16\]"):
        run(tiny_llama, batch, PatchHeads([(0, 0), (0, 1)], torch.zeros(2, 8)))
    with pytest.raises(IclMechError, match="3 rows but the batch has 4"):
        run(tiny_llama, batch, PatchHeads([(0, 0)], torch.zeros(3, 1, 16)))
    with pytest.raises(IclMechError, match="layer 7 out of range"):
        mean_head_outputs(tiny_llama, batch.prompts, layers=[7])


def test_capture_heads_keeps_one_position_per_row(tiny_llama, task, monkeypatch):
    batch = _batch(tiny_llama, task)
    _no_forward(monkeypatch, tiny_llama)
    with pytest.raises(IclMechError, match="keeps one per row"):
        run(tiny_llama, batch, CaptureHeads([(0, 0)], positions="all"))


def test_k_larger_than_the_number_of_heads_is_refused(tiny_llama, task, monkeypatch):
    clean, shuffled = effect_prompts(task, 2, n_demonstrations=2, seed=0)
    effect = indirect_effects(tiny_llama, clean, shuffled)
    with pytest.raises(IclMechError, match=r"k=13: .* covers 12 heads .* choose k in 0..12"):
        function_vector(tiny_llama, effect, k=13)
    with pytest.raises(IclMechError, match="top k=13"):
        effect.top(13)
    _no_forward(monkeypatch, tiny_llama)
    settings = Settings.quick(tasks=("antonym",), k=13)
    with pytest.raises(IclMechError, match=r"k=13 heads, but tiny-llama-3L has 12"):
        evaluate(tiny_llama, [task], settings, progress=False)


def test_a_task_whose_answers_share_their_first_token_is_refused(tiny_llama, monkeypatch):
    animals = "cat dog bird fish horse mouse sheep goat".split()
    records = [{"input": f"{a} sound", "output": f"the {a}"} for a in animals]
    task = tasks.from_records("the_animal", records)
    clean, shuffled = effect_prompts(task, 2, n_demonstrations=2, seed=0)
    _no_forward(monkeypatch, tiny_llama)
    with pytest.raises(IclMechError, match=r"all 8 distinct answers .* same token ' the'"):
        indirect_effects(tiny_llama, clean, shuffled)
    with pytest.raises(IclMechError, match="same token"):
        evaluate(tiny_llama, [task], Settings.quick(), progress=False)


def test_too_few_training_examples_for_the_prompts_is_refused_before_any_forward(
    tiny_llama, monkeypatch
):
    _no_forward(monkeypatch, tiny_llama)
    with pytest.raises(IclMechError, match=r"'next_letter'.* lower n_prompts to \d+"):
        Settings(tasks=("next_letter",), n_prompts=1000)  # refused with the settings
    with pytest.raises(IclMechError, match=r"'next_letter'.* lower n_prompts to \d+"):
        evaluate(tiny_llama, [tasks.load("next_letter")], Settings(n_prompts=60,
                 tasks=("antonym",)), progress=False)  # fits antonym, not next_letter  # fmt: skip


def test_batched_effects_equal_one_head_at_a_time_on_every_backend(task):
    """The batched effect resumes at each layer; on each backend it equals patching one head
    at a time in full forwards, with the same forward count (the real models' bridge against
    their hooked twin: tests/test_portability.py)."""
    clean, shuffled = effect_prompts(task, 3, n_demonstrations=2, seed=0)
    counts = set()
    for backend in ("hooked", "bridge") if TL_MAJOR < 4 else ("bridge",):
        model = make_tiny("llama", backend=backend)
        batched = indirect_effects(model, clean, shuffled, layers=[0, 2], batch_size=2)
        naive = naive_indirect_effects(model, clean, shuffled, layers=[0, 2], batch_size=2)
        # a random model's answer probabilities are about 1/vocab: effects of about 1e-5
        torch.testing.assert_close(batched.effects, naive.effects, atol=1e-8, rtol=0)
        assert batched.effects.abs().max() > 1e-6  # some head moves the answer
        counts.add(batched.forwards)
    assert len(counts) == 1


def test_settings_validate_before_model_work():
    assert Settings.quick() != Settings.full() and Settings.full() == Settings()
    for bad in (
        dict(k=-1),
        dict(tasks=("sentiment",)),
        dict(n_prompts=0),
        dict(strength=float("nan")),
    ):
        with pytest.raises(IclMechError):
            Settings.quick(**bad)


def test_the_reproduction_runs_on_a_tiny_model(tiny_llama, tmp_path):
    settings = Settings.quick(
        tasks=("country_capital", "antonym"), n_prompts=3, n_dev=3, n_test=3,
        n_demonstrations=2, n_dummies=1, k=3, batch_size=4, effect_batch_size=2, groups=2,
    )  # fmt: skip
    report = reproduce("function-vectors", tiny_llama, settings, out=tmp_path, progress=False)
    table = report.tables["accuracy"]
    assert list(table["task"]) == ["country_capital", "antonym", "mean"]
    assert table["fv_add"].str.match(r"^\d\.\d\d \[\d\.\d\d, \d\.\d\d\]$").all()
    assert set(report.tables["heads"]["task"]) == {"country_capital", "antonym"}
    assert all(isinstance(f, Figure) for f in report.figures.values())
    assert (tmp_path / "function_vectors_report.json").is_file()
    assert report.headline["indirect_effect_forwards_per_task"] == 2 + 2 * (3 + 2)


def test_figures_of_one_task(tiny_llama, task):
    settings = Settings.quick(tasks=("antonym",), n_prompts=2, n_dev=2, n_test=2,
                              n_demonstrations=2, n_dummies=1, k=2)  # fmt: skip
    results = evaluate(tiny_llama, [task], settings, progress=False)
    result = results.tasks[0]
    assert set(result.layers) == {"tv_replace", "tv_add", "fv_add", "fv_shuffled"}
    for condition, layer in result.layers.items():  # test hits at the layer dev chose
        assert result.curve(condition).best_layer == layer
    for fig in (indirect_effect_map(result.effect), accuracy_bars(results), layer_curves(results)):
        assert isinstance(fig, Figure)


@pytest.mark.parametrize("layers", [tuple(range(30)), (2, 5, 9, 10)])
def test_indirect_effect_map_is_a_grid_with_its_marks_on_the_top_heads(layers, tmp_path):
    """Ten tasks and their mean in a grid that reads at 1600 px; each panel's circles sit at
    (head, layer) of its top-k heads, on the cells that hold those heads' effects."""
    generator = torch.Generator().manual_seed(0)
    n_heads, k = 9, 10
    effects = [
        IndirectEffect(f"task{t}", layers, torch.zeros(len(layers), n_heads, 2),
                       torch.randn(3, len(layers), n_heads, generator=generator), torch.zeros(3), 3)
        for t in range(10)
    ]  # fmt: skip
    average = torch.stack([e.mean for e in effects]).mean(0)
    mean = IndirectEffect("mean over tasks", layers, effects[0].mean_outputs, average[None],
                          torch.zeros(1), 3)  # fmt: skip
    fig = indirect_effect_map(effects, k=k)
    width, _ = Image.open(save_figure(fig, tmp_path, "map")).size
    assert width <= 1700
    panels = {ax.get_title(): ax for ax in fig.axes if ax.get_visible() and ax.get_title()}
    assert len(panels) == 11 and len({ax.get_position().y0 for ax in panels.values()}) >= 3
    for effect in [*effects, mean]:
        ax = panels[effect.task]
        mesh = next(c for c in ax.collections if isinstance(c, QuadMesh))
        marks = next(c for c in ax.collections if isinstance(c, PathCollection)).get_offsets()
        top = effect.top(k)
        assert [(int(y), int(x)) for x, y in np.asarray(marks)] == top
        edges = mesh.get_coordinates()[:, 0, 1]  # the cells' lower and upper layer bounds
        cells = np.asarray(mesh.get_array()).reshape(len(layers), n_heads)
        for layer, head in top:
            row = int(np.searchsorted(edges, layer)) - 1
            assert edges[row] < layer < edges[row + 1]
            assert cells[row, head] == pytest.approx(float(effect.mean[layers.index(layer), head]))


@pytest.mark.embedded
def test_pipeline_on_the_embedded_model(embedded):
    """SmolLM2 (grouped-query: 9 query heads over 3 key/value heads): finite numbers with
    intervals for every condition and head."""
    settings = Settings.quick(tasks=("country_capital",), n_prompts=4, n_dev=3, n_test=5,
                              n_dummies=1, k=5, effect_batch_size=4)  # fmt: skip
    results = evaluate(embedded, [tasks.load("country_capital")], settings, progress=False)
    result = results.tasks[0]
    assert result.effect.effects.shape == (4, 30, 9)
    assert result.effect.forwards == 1 + 1 * (30 + 2)
    assert len(result.vector.heads) == 5 and bool(torch.isfinite(result.vector.values).all())
    assert float(result.vector.values.norm()) > 0
    row = result.to_frame().iloc[0]
    for condition in CONDITIONS:
        assert row[f"{condition}_low"] <= row[condition] <= row[f"{condition}_high"]
    heads = results.indirect_frame()
    assert len(heads) == 270 and heads.drop(columns="task").notna().all().all()
    assert (heads["indirect_effect_low"] <= heads["indirect_effect"]).all()
    assert results.accuracy_frame()["fv_add"].str.contains(r"\[").all()


@pytest.mark.embedded
def test_indirect_effects_on_the_embedded_model_equal_one_head_at_a_time(embedded):
    """SmolLM2's grouped-query heads, two layers (18 heads): the batched cached effect equals
    patching each head alone in a full forward."""
    capitals = tasks.load("country_capital")
    clean, shuffled = effect_prompts(capitals, 3, n_demonstrations=3, seed=0)
    with torch_threads(1):
        fast = indirect_effects(embedded, clean, shuffled, layers=[9, 15], batch_size=3)
        slow = naive_indirect_effects(embedded, clean, shuffled, layers=[9, 15], batch_size=3)
    scale = float(slow.effects.abs().max())
    assert scale > 1e-4, "no head moves P(answer): the comparison would be empty"
    torch.testing.assert_close(fast.effects, slow.effects, atol=1e-3 * scale, rtol=1e-3)
    torch.testing.assert_close(fast.shuffled_probability, slow.shuffled_probability)
    assert fast.top(3) == slow.top(3)
