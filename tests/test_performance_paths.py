"""The fast and lean paths give the numbers of the plain paths (nothing here is timed).

- saliency: ``memory="lean"`` (block-by-block recomputation) equals ``memory="full"``; rows run
  in groups of similar length equal one padded pass;
- ``icl_mech.layout``: weights laid out for ``F.linear`` change no number and are put back;
- steering: the hook with its precomputed directions equals the formula as it was written;
- generation: with the weights laid out, the same tokens and the same last-layer states;
- ``attach``: clearing only the points it used leaves no hook behind, nested blocks included, on
  both backends; on the bridge the hook points are resolved once per model.
"""

import copy
import sys
from contextlib import nullcontext

import pytest
import torch

from icl_mech import Capture, HookSpec, IclMechError, PromptBatch, attach, tasks, tiny_model
from icl_mech.anchors import row_groups, saliency
from icl_mech.anchors.experiment import task_prompts
from icl_mech.backends import is_bridge
from icl_mech.icv import ICVSteering, extract_icv, generate
from icl_mech.icv.steering import unit
from icl_mech.interventions import AddVector
from icl_mech.layout import lay_out, linear_layout
from icl_mech.threads import torch_threads

saliency_module = sys.modules["icl_mech.anchors.saliency"]
generation_module = sys.modules["icl_mech.icv.generation"]


@pytest.fixture(autouse=True)
def one_thread():
    with torch_threads(1):
        yield


def sentiment_batch(model, n=6, seed=0):
    return PromptBatch.from_prompts(model, task_prompts(tasks.load("sentiment"), n, seed=seed))


def no_hooks_left(model) -> bool:
    return all(not hp.fwd_hooks and not hp.bwd_hooks for hp in model.hook_dict.values())


# --- saliency -------------------------------------------------------------------------------


@pytest.mark.parametrize("options", [{}, {"layers": [2, 0]}, {"target": "prediction"},
                                     {"heads": "sum-of-abs", "layers": [1]}])  # fmt: skip
def test_lean_saliency_equals_full(tiny, options):
    batch = sentiment_batch(tiny)
    full = saliency(tiny, batch, **options)
    lean = saliency(tiny, batch, memory="lean", **options)
    assert lean.layers == full.layers
    torch.testing.assert_close(lean.scores, full.scores, atol=1e-6, rtol=0)
    torch.testing.assert_close(lean.logits, full.logits, atol=1e-6, rtol=0)
    torch.testing.assert_close(lean.loss, full.loss, atol=1e-6, rtol=0)
    assert torch.equal(lean.labels, full.labels)
    assert all(p.grad is None for p in tiny.parameters())
    assert all(p.requires_grad for p in tiny.parameters())


@pytest.mark.parametrize("fraction", [1, 2, 3])
def test_lean_saliency_with_any_top_segment_equals_full(tiny_llama, monkeypatch, fraction):
    """The top blocks run with their graph, the rest one at a time: any split, same scores."""
    model = tiny_model("llama", n_layers=4) if fraction == 2 else tiny_llama
    monkeypatch.setattr(saliency_module, "LEAN_TOP_FRACTION", fraction)
    batch = sentiment_batch(model, n=3)
    for layers in (None, [1], [model.cfg.n_layers - 1, 0]):
        full = saliency(model, batch, layers=layers)
        lean = saliency(model, batch, layers=layers, memory="lean")
        torch.testing.assert_close(lean.scores, full.scores, atol=1e-6, rtol=0)


def test_lean_saliency_applies_items_once(tiny_llama):
    """An intervention on hook_resid_pre (the point the lean path keeps) acts once."""
    batch = sentiment_batch(tiny_llama, n=3)
    push = AddVector("blocks.1.hook_resid_pre", torch.randn(tiny_llama.cfg.d_model), strength=3.0)
    full = saliency(tiny_llama, batch, push)
    lean = saliency(tiny_llama, batch, push, memory="lean")
    plain = saliency(tiny_llama, batch)
    torch.testing.assert_close(lean.scores, full.scores, atol=1e-6, rtol=0)
    assert (full.scores - plain.scores).abs().max() > 1e-4  # the item did change the scores
    assert no_hooks_left(tiny_llama)


def test_rows_grouped_by_length_equal_one_padded_pass(tiny, monkeypatch):
    batch = sentiment_batch(tiny, n=6)
    one_pass = saliency(
        tiny, batch, AddVector("blocks.0.hook_resid_pre", torch.zeros(tiny.cfg.d_model))
    )
    monkeypatch.setattr(row_groups, "PASS_OVERHEAD_TOKENS", 0)  # a group per length
    groups = row_groups.length_groups(tiny, batch)
    assert len(groups) > 1 and sorted(sum(groups, [])) == list(range(len(batch)))
    for memory in ("full", "lean"):
        grouped = saliency(tiny, batch, memory=memory)
        assert grouped.scores.shape == one_pass.scores.shape
        torch.testing.assert_close(grouped.scores, one_pass.scores, atol=1e-6, rtol=0)
        torch.testing.assert_close(grouped.logits, one_pass.logits, atol=1e-5, rtol=0)
        padding = ~batch.attention_mask.bool()
        assert grouped.scores.masked_select(padding[:, None, :, None]).abs().max() == 0
        assert grouped.scores.masked_select(padding[:, None, None, :]).abs().max() == 0


def test_lean_saliency_refuses_inference_mode_and_bad_memory(tiny_llama):
    batch = sentiment_batch(tiny_llama, n=2)
    with pytest.raises(IclMechError, match="memory"):
        saliency(tiny_llama, batch, memory="small")
    with torch.inference_mode(), pytest.raises(IclMechError, match="inference_mode"):
        saliency(tiny_llama, batch, memory="lean")


@pytest.mark.embedded
def test_lean_saliency_equals_full_on_the_embedded_model(embedded):
    batch = sentiment_batch(embedded, n=4)
    layers = [0, 14, 29]
    full = saliency(embedded, batch, layers=layers)
    lean = saliency(embedded, batch, layers=layers, memory="lean")
    torch.testing.assert_close(lean.scores, full.scores, atol=1e-6, rtol=0)
    torch.testing.assert_close(lean.loss, full.loss, atol=1e-6, rtol=0)


# --- the weight layout ----------------------------------------------------------------------


def test_linear_layout_changes_no_number_and_is_undone(tiny):
    tokens = torch.randint(0, tiny.cfg.d_vocab, (2, 9))
    before = {name: (p.detach().clone(), p.stride()) for name, p in tiny.named_parameters()}
    with torch.no_grad():
        expected = tiny(tokens)
        for in_place in (False, True):
            with linear_layout(tiny, in_place=in_place):
                assert torch.equal(tiny(tokens), expected)
                with linear_layout(tiny):  # nested: nothing more to do
                    assert torch.equal(tiny(tokens), expected)
            for name, p in tiny.named_parameters():
                assert torch.equal(p, before[name][0]) and p.stride() == before[name][1], name


LAYOUT_IS_HOOKED = "linear_layout lays out HookedTransformer weights; the bridge keeps its own"


def test_linear_layout_keeps_in_place_changes(tiny_llama):
    if is_bridge(tiny_llama):
        pytest.skip(LAYOUT_IS_HOOKED)
    parameter = tiny_llama.blocks[0].mlp.W_in
    saved = parameter.detach().clone()
    try:
        with torch.no_grad(), linear_layout(tiny_llama):
            parameter.mul_(2)
        torch.testing.assert_close(parameter.detach(), 2 * saved)
        assert parameter.is_contiguous()
    finally:
        with torch.no_grad():
            parameter.copy_(saved)


def test_lay_out_for_good_changes_no_number():
    model = tiny_model("llama")
    tokens = torch.randint(0, model.cfg.d_vocab, (2, 7))
    with torch.no_grad():
        expected = model(tokens)
        lay_out(model)
        assert not model.blocks[0].mlp.W_gate.is_contiguous()  # stored as F.linear reads it
        assert torch.equal(model(tokens), expected)


# --- steering and generation ----------------------------------------------------------------


def formula_as_it_was(x, directions, strengths):
    """The steering formula as written before the hook precomputed its directions."""
    x32 = x.float()
    units = unit(directions.float())
    lam = strengths.float()
    lam = lam[:, None, :] if lam.ndim == 2 else lam
    norm = x32.norm(dim=-1, keepdim=True)
    x_unit = x32 / norm.clamp_min(1e-12)
    similarity = 1.0 + (-(x_unit @ units.T)).clamp_min(0.0)
    shift = (lam * similarity) @ units / units.shape[0]
    steered = unit(x_unit + shift) * norm
    untouched = (shift == 0).all(dim=-1, keepdim=True)
    return torch.where(untouched, x32, steered).to(x.dtype)


@pytest.mark.parametrize("strengths", [[0.1], [0.08, -0.05], [[0.1, 0.0], [0.0, 0.0]]])
def test_steering_hook_equals_the_formula_as_it_was(tiny, strengths):
    pairs = tasks.load_pairs("negative_positive")[:4]
    icvs = [extract_icv(tiny, pairs), extract_icv(tiny, tasks.load_pairs("rude_polite")[:4])]
    lam = torch.tensor(strengths)
    icvs = icvs[: lam.shape[-1]]
    batch = sentiment_batch(tiny, n=2)
    name = "blocks.1.hook_mlp_out"
    before, after = Capture(name), Capture(name)
    with torch.no_grad(), attach(tiny, before, ICVSteering(icvs, lam), after, batch=batch):
        tiny(batch.tokens, attention_mask=batch.attention_mask)
    directions = torch.stack([icv.direction(1) for icv in icvs])
    expected = formula_as_it_was(before.activations[name], directions, lam)
    assert torch.equal(after.activations[name], expected)
    if lam.ndim == 2:  # a row whose strengths are all zero is left as it was, bit for bit
        assert torch.equal(after.activations[name][1], before.activations[name][1])


def last_layer_states(model):
    """A hook spec recording the last block's output at every forward of a generation."""
    states = []
    name = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
    return states, HookSpec(name, lambda x, hook: states.append(x[:, -1].clone()))


def generations(model, monkeypatch, prompts, *items, fast: bool, **settings):
    layout = linear_layout if fast else (lambda model, **kw: nullcontext())
    monkeypatch.setattr(generation_module, "linear_layout", layout)
    states, record = last_layer_states(model)
    out = generate(model, prompts, *items, record, **settings)
    return out.new_tokens, states


def check_same_generation(model, monkeypatch, prompts, *items, stored=None, **settings):
    """``stored``: the same model with TransformerLens's own weight layout, when ``model`` was
    laid out at load; otherwise ``model`` is laid out for the call and must be restored."""
    contiguous = [p.is_contiguous() for p in model.parameters()]
    old_tokens, old_states = generations(
        stored or model, monkeypatch, prompts, *items, fast=False, **settings
    )
    new_tokens, new_states = generations(model, monkeypatch, prompts, *items, fast=True, **settings)
    assert new_tokens == old_tokens
    assert len(new_states) == len(old_states)
    for old, new in zip(old_states, new_states):
        torch.testing.assert_close(new, old, atol=1e-5, rtol=0)
    if stored is None:  # the layout was undone (on the bridge nothing was laid out)
        assert [p.is_contiguous() for p in model.parameters()] == contiguous


@pytest.mark.parametrize("positions", ["all", "new"])
def test_generation_with_laid_out_weights_equals_the_old_path(tiny, monkeypatch, positions):
    icv = extract_icv(tiny, tasks.load_pairs("negative_positive")[:4])
    steering = ICVSteering(icv, 0.1, positions=positions)
    prompts = ["The food was", "Our hotel room was quite"]
    check_same_generation(tiny, monkeypatch, prompts, steering, max_new_tokens=6,
                          stop_at_eos=False)  # fmt: skip
    check_same_generation(tiny, monkeypatch, prompts, steering, max_new_tokens=4, do_sample=True,
                          seed=3)  # fmt: skip


@pytest.mark.embedded
def test_steered_generation_equals_the_old_path_on_the_embedded_model(embedded, monkeypatch):
    if is_bridge(embedded):
        pytest.skip(LAYOUT_IS_HOOKED)
    icv = extract_icv(embedded, tasks.load_pairs("negative_positive")[:4])
    prompts = ["Tell me about the hotel we stayed in:", "Describe the new phone in a few words:"]
    assert not all(p.is_contiguous() for p in embedded.parameters())  # laid out at load
    stored = copy.deepcopy(embedded)
    for parameter in stored.parameters():
        parameter.data = parameter.data.contiguous()
    check_same_generation(embedded, monkeypatch, prompts, ICVSteering(icv, 0.08), stored=stored,
                          max_new_tokens=6, stop_at_eos=False)  # fmt: skip


# --- attach -----------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["hooked", "bridge"])
def llama_of_each_backend(request, tiny_llama):
    if request.param == "bridge":
        return tiny_model("llama", backend="bridge")
    if is_bridge(tiny_llama):
        pytest.skip("TransformerLens 4 has no HookedTransformer")
    return tiny_llama


def test_attach_clears_only_its_own_hooks_on_every_exit(llama_of_each_backend):
    model = llama_of_each_backend
    seen = []
    outer = HookSpec("blocks.0.hook_resid_post", lambda x, hook: seen.append("outer"))
    inner = [
        HookSpec("blocks.0.hook_resid_post", lambda x, hook: seen.append("inner")),
        HookSpec("blocks.1.hook_mlp_out", lambda x, hook: None),
        HookSpec("blocks.1.hook_mlp_out", lambda x, hook: None, "bwd"),
    ]
    tokens = torch.randint(0, model.cfg.d_vocab, (1, 5))
    with torch.no_grad(), attach(model, outer):
        with attach(model, *inner):
            model(tokens)
        assert seen == ["outer", "inner"]
        model(tokens)  # the outer hook is still there
        assert seen == ["outer", "inner", "outer"]
        with pytest.raises(RuntimeError, match="boom"), attach(model, *inner):
            raise RuntimeError("boom")
        assert len(model.hook_dict["blocks.0.hook_resid_post"].fwd_hooks) == 1
    assert no_hooks_left(model)


def test_attaching_to_a_bridge_resolves_its_hook_points_once(monkeypatch):
    """The bridge rebuilds ``hook_dict`` (every alias resolved) on each read; ``attach`` reads
    it once per model, not once per hook or per block."""
    model = tiny_model("llama", backend="bridge")
    batch = sentiment_batch(model, n=2)
    reads = []
    hook_dict = type(model).hook_dict
    monkeypatch.setattr(type(model), "hook_dict",
                        property(lambda self: reads.append(1) or hook_dict.fget(self)))  # fmt: skip
    items = [
        Capture("blocks.0.hook_resid_pre"),
        AddVector("blocks.1.hook_resid_post", torch.ones(64)),
    ]
    with torch.no_grad():
        for _ in range(3):
            with attach(model, *items, batch=batch):
                model(batch.tokens, attention_mask=batch.attention_mask)
    assert len(reads) == 1
    assert no_hooks_left(model)
