"""In-context vectors on tiny models: extraction, the steering formula, generation, errors."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from sklearn.decomposition import PCA

from icl_mech import Capture, HookSpec, IclMechError, attach, make, tasks, tiny_model
from icl_mech.activations import last_token_states
from icl_mech.batching import TextBatch
from icl_mech.hooks import points
from icl_mech.icv import (
    ICV,
    ICVSteering,
    extract_icv,
    first_component,
    generate,
    steer,
)
from icl_mech.threads import torch_threads

PAIRS = tasks.load_pairs("negative_positive")[:6]
PROMPTS = ["The food was", "Our hotel room", "The service at this place was slow and"]


@pytest.fixture(autouse=True)
def one_thread():
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def icvs():
    """Two ICVs per tiny architecture (different pair sets), extracted once."""
    out = {}
    for arch in ("gpt2", "llama"):
        model = tiny_model(arch)
        out[arch] = (
            extract_icv(model, PAIRS),
            extract_icv(model, tasks.load_pairs("rude_polite")[:5]),
        )
    return out


def arch_of(model) -> str:
    return "gpt2" if "gpt2" in model.cfg.model_name else "llama"


def reference_steer(x, directions, strengths):
    """The formula of DESIGN.md written out plainly, one ICV at a time."""
    x = x.float()
    shift = 0
    for direction, lam in zip(directions, strengths):
        target = direction.float().expand_as(x)
        similarity = 1 + torch.clamp(F.cosine_similarity(x, -target, dim=-1), min=0)
        shift = shift + lam * similarity.unsqueeze(-1) * F.normalize(direction.float(), dim=-1)
    shift = shift / len(directions)
    return F.normalize(F.normalize(x, dim=-1) + shift, dim=-1) * x.norm(dim=-1, keepdim=True)


def forward(model, texts, *items):
    batch = TextBatch.from_texts(model, texts)
    with torch.no_grad(), attach(model, *items):
        return model(batch.tokens, attention_mask=batch.attention_mask)


# --- the formula -------------------------------------------------------------------------


def test_formula_matches_plain_reference_for_several_icvs():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 16, generator=generator) * 4
    directions = torch.randn(3, 16, generator=generator)
    strengths = [0.1, -0.05, 0.3]
    ours = steer(x, directions, torch.tensor(strengths))
    torch.testing.assert_close(
        ours, reference_steer(x, directions, strengths), atol=1e-6, rtol=1e-5
    )
    torch.testing.assert_close(ours.norm(dim=-1), x.norm(dim=-1), atol=1e-5, rtol=1e-5)


def test_formula_keeps_dtype_and_zero_vectors():
    x = torch.randn(2, 3, 8).to(torch.bfloat16)
    x[0, 0] = 0
    out = steer(x, torch.randn(1, 8), torch.tensor([0.1]))
    assert out.dtype == torch.bfloat16
    assert torch.isfinite(out.float()).all() and (out[0, 0] == 0).all()


def test_per_row_strengths_equal_one_strength_per_run():
    x = torch.randn(3, 4, 8)
    directions = torch.randn(2, 8)
    per_row = torch.tensor([[0.0, 0.1], [0.2, 0.0], [0.05, 0.05]])
    together = steer(x, directions, per_row)
    for row in range(3):
        alone = steer(x[row : row + 1], directions, per_row[row])
        torch.testing.assert_close(together[row : row + 1], alone, atol=0, rtol=0)


# --- the intervention on a model ---------------------------------------------------------


def test_zero_strength_equals_no_steering(tiny, icvs):
    icv = icvs[arch_of(tiny)][0]
    plain = forward(tiny, PROMPTS)
    steered = forward(tiny, PROMPTS, ICVSteering(icv, 0.0))
    torch.testing.assert_close(steered, plain, atol=0, rtol=0)
    moved = forward(tiny, PROMPTS, ICVSteering(icv, 0.2))
    assert (moved - plain).abs().max() > 1e-3


def test_hook_applies_the_formula_and_keeps_norms_at_every_layer(tiny, icvs):
    """Several ICVs at once: each layer's output equals the reference applied to its input."""
    pair = icvs[arch_of(tiny)]
    strengths = [0.15, 0.08]
    names = points(tiny, "hook_mlp_out")
    before, after = Capture(names), Capture(names)
    forward(tiny, PROMPTS, before, ICVSteering(pair, strengths), after)
    for layer, name in enumerate(names):
        directions = [icv.direction(layer) for icv in pair]
        expected = reference_steer(before.activations[name], directions, strengths)
        torch.testing.assert_close(after.activations[name], expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(
            after.activations[name].norm(dim=-1),
            before.activations[name].norm(dim=-1),
            atol=1e-4,
            rtol=1e-5,
        )
        assert not torch.allclose(after.activations[name], before.activations[name])


def test_layer_subset_only_touches_those_layers(tiny_llama, icvs):
    icv = icvs["llama"][0]
    names = points(tiny_llama, "hook_mlp_out")
    before, after = Capture(names), Capture(names)
    forward(tiny_llama, PROMPTS, before, ICVSteering(icv, 0.2, layers=[1]), after)
    torch.testing.assert_close(after.activations[names[0]], before.activations[names[0]])
    assert not torch.allclose(after.activations[names[1]], before.activations[names[1]])


def test_catalogue_and_apply_equal_the_intervention(tiny_llama, icvs):
    icv = icvs["llama"][0]
    direct = forward(tiny_llama, PROMPTS, ICVSteering(icv, 0.1))
    from_catalogue = forward(tiny_llama, PROMPTS, make("icv", icvs=icv, strength=0.1))
    batch = TextBatch.from_texts(tiny_llama, PROMPTS)
    with torch.no_grad(), icv.apply(tiny_llama, strength=0.1):
        applied = tiny_llama(batch.tokens, attention_mask=batch.attention_mask)
    torch.testing.assert_close(from_catalogue, direct, atol=0, rtol=0)
    torch.testing.assert_close(applied, direct, atol=0, rtol=0)
    assert "strength=[0.1" in repr(ICVSteering(icv, 0.1))


def test_positions_outside_generation(tiny_llama, icvs):
    """In one plain forward every position is a prompt position."""
    icv = icvs["llama"][0]
    plain = forward(tiny_llama, PROMPTS)
    every = forward(tiny_llama, PROMPTS, ICVSteering(icv, 0.2))
    prompt = forward(tiny_llama, PROMPTS, ICVSteering(icv, 0.2, positions="prompt"))
    new = forward(tiny_llama, PROMPTS, ICVSteering(icv, 0.2, positions="new"))
    last = forward(tiny_llama, PROMPTS, ICVSteering(icv, 0.2, positions="last"))
    torch.testing.assert_close(prompt, every, atol=0, rtol=0)
    torch.testing.assert_close(new, plain, atol=0, rtol=0)
    torch.testing.assert_close(last[:, :-1], plain[:, :-1], atol=0, rtol=0)
    assert not torch.allclose(last[:, -1], plain[:, -1])


# --- extraction ---------------------------------------------------------------------------


def test_extraction_equals_independent_reference(tiny, icvs):
    """One text per forward (no padding) + scikit-learn's PCA, sign towards the mean."""
    icv = icvs[arch_of(tiny)][0]
    names = points(tiny, "hook_resid_post")

    def states(text):
        capture = Capture(names, positions="last")
        forward(tiny, [text], capture)
        return torch.cat([capture.activations[n][0] for n in names])

    differences = torch.stack([states(y) - states(x) for x, y in PAIRS]).double()
    mean = differences.mean(0)
    component = torch.from_numpy(PCA(n_components=1).fit(differences.numpy()).components_[0])
    component = component if component @ mean > 0 else -component
    expected = (component + mean).float().view(tiny.cfg.n_layers, tiny.cfg.d_model)
    torch.testing.assert_close(icv.vector, expected, atol=2e-4, rtol=1e-4)
    assert icv.n_pairs == len(PAIRS) and 0 < icv.explained_variance <= 1


def test_batched_states_equal_one_text_at_a_time(tiny):
    texts = [t for pair in PAIRS for t in pair]
    layers = list(range(tiny.cfg.n_layers))
    batched = last_token_states(tiny, texts, layers, batch_size=32)
    single = last_token_states(tiny, texts, layers, batch_size=1)
    torch.testing.assert_close(batched, single, atol=1e-4, rtol=1e-4)


def test_swapping_source_and_target_negates_the_icv(tiny_gpt2):
    forward_icv = extract_icv(tiny_gpt2, PAIRS)
    backward_icv = extract_icv(tiny_gpt2, [(y, x) for x, y in PAIRS])
    torch.testing.assert_close(backward_icv.vector, -forward_icv.vector, atol=1e-4, rtol=1e-4)
    assert float((forward_icv.component * forward_icv.mean).sum()) > 0


def test_single_pair_gives_the_unit_mean_as_component():
    mean, component, ratio = first_component(torch.tensor([[3.0, 4.0]]))
    torch.testing.assert_close(component, torch.tensor([0.6, 0.8]))
    assert math.isnan(ratio)


def test_save_load_roundtrip_and_model_checks(tmp_path, icvs, tiny_llama):
    icv = icvs["llama"][0]
    path = icv.save(tmp_path / "sentiment.safetensors")
    loaded = ICV.load(path, model=tiny_llama)
    for name in ("vector", "mean", "component"):
        torch.testing.assert_close(getattr(loaded, name), getattr(icv, name), atol=0, rtol=0)
    assert loaded.provenance == icv.provenance
    assert loaded.hook_points[0] == "blocks.0.hook_resid_post"
    assert set(icv.provenance) >= {"model", "hook_points", "layers", "seed", "icl_mech_version"}
    assert json.loads(path.with_suffix(".json").read_text())["n_pairs"] == len(PAIRS)
    with pytest.raises(IclMechError, match="width"):
        ICV.load(path, model=tiny_model("llama", d_model=32))
    with pytest.raises(IclMechError, match="layers"):
        ICV.load(path, model=tiny_model("llama", n_layers=2))
    (tmp_path / "other.safetensors").write_bytes(b"not a file")
    with pytest.raises(IclMechError, match="not a readable ICV file"):
        ICV.load(tmp_path / "other.safetensors")
    save_file({"x": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(IclMechError, match="not a 'icv'"):
        ICV.load(tmp_path / "plain.safetensors")
    with pytest.raises(IclMechError, match="no saved vector"):
        ICV.load(tmp_path / "missing.safetensors")


# --- errors --------------------------------------------------------------------------------


def test_errors_before_any_forward(tiny_llama, icvs):
    icv = icvs["llama"][0]
    with pytest.raises(IclMechError, match="empty"):
        extract_icv(tiny_llama, [])
    with pytest.raises(IclMechError, match="pair 0"):
        extract_icv(tiny_llama, [("only one text",)])
    with pytest.raises(IclMechError, match="pair 1"):
        extract_icv(tiny_llama, [("a", "b"), ("a", "  ")])
    for bad in (math.nan, math.inf, -math.inf):
        with pytest.raises(IclMechError, match="finite"):
            ICVSteering(icv, bad)
    with pytest.raises(IclMechError, match="finite"):
        ICVSteering(icv, torch.tensor([[0.1], [math.nan]]))
    with pytest.raises(IclMechError, match="2 ICVs need 2 strengths"):
        ICVSteering([icv, icv], 0.1)
    with pytest.raises(IclMechError, match="no ICVs"):
        ICVSteering([], [])
    with pytest.raises(IclMechError, match="unknown positions 'nwe'"):
        ICVSteering(icv, 0.1, positions="nwe")
    wide = tiny_model("llama", d_model=32)
    with pytest.raises(IclMechError, match="width"):
        forward(wide, PROMPTS, ICVSteering(icv, 0.1))
    with pytest.raises(IclMechError, match="layers"):
        forward(tiny_model("llama", n_layers=4), PROMPTS, ICVSteering(icv, 0.1))
    with pytest.raises(IclMechError, match="not covered"):
        forward(tiny_llama, PROMPTS, ICVSteering(icv, 0.1, layers=[7]))
    with pytest.raises(IclMechError, match="rows"):
        forward(tiny_llama, PROMPTS, ICVSteering(icv, torch.zeros(2, 1)))


def test_wrong_shape_icv_is_rejected():
    with pytest.raises(IclMechError, match="shape"):
        ICV(torch.zeros(3, 8), torch.zeros(3, 8), torch.zeros(2, 8), (0, 1, 2), "m", 3, 8)


# --- generation ----------------------------------------------------------------------------


@pytest.mark.parametrize("positions", ["all", "prompt", "new"])
def test_cached_generation_equals_uncached(tiny, icvs, positions):
    steering = ICVSteering(icvs[arch_of(tiny)], [0.2, 0.1], positions=positions)
    settings = dict(max_new_tokens=6, stop_at_eos=False)
    cached = generate(tiny, PROMPTS, steering, use_cache=True, **settings)
    uncached = generate(tiny, PROMPTS, steering, use_cache=False, **settings)
    assert cached.new_tokens == uncached.new_tokens


def test_generation_positions_touch_what_they_say(tiny_llama, icvs):
    icv = icvs["llama"][0]
    settings = dict(max_new_tokens=6, stop_at_eos=False)
    plain = generate(tiny_llama, PROMPTS, **settings).new_tokens
    outputs = {
        positions: generate(
            tiny_llama, PROMPTS, ICVSteering(icv, 0.5, positions=positions), **settings
        ).new_tokens
        for positions in ("all", "prompt", "new")
    }
    # the first token is predicted from prompt positions only
    assert [row[0] for row in outputs["new"]] == [row[0] for row in plain]
    assert [row[0] for row in outputs["prompt"]] == [row[0] for row in outputs["all"]]
    assert outputs["new"] != plain and outputs["prompt"] != outputs["all"]


def test_batched_generation_equals_unbatched(tiny, icvs):
    steering = ICVSteering(icvs[arch_of(tiny)][0], 0.2)
    settings = dict(max_new_tokens=6, stop_at_eos=False)
    together = generate(tiny, PROMPTS, steering, batch_size=8, **settings)
    alone = generate(tiny, PROMPTS, steering, batch_size=1, **settings)
    assert together.new_tokens == alone.new_tokens
    assert together.completions == alone.completions


def test_per_row_strengths_in_generation_equal_separate_runs(tiny_llama, icvs):
    icv = icvs["llama"][0]
    strengths = [0.0, 0.2, 0.4]
    settings = dict(max_new_tokens=5, stop_at_eos=False)
    prompts = [PROMPTS[0]] * 3
    rows = generate(tiny_llama, prompts, ICVSteering(icv, [[s] for s in strengths]), **settings)
    chunked = generate(
        tiny_llama, prompts, ICVSteering(icv, [[s] for s in strengths]), batch_size=2, **settings
    )
    separate = [
        generate(tiny_llama, PROMPTS[0], ICVSteering(icv, s), **settings).new_tokens[0]
        for s in strengths
    ]
    assert rows.new_tokens == separate == chunked.new_tokens


def test_seeded_sampling_is_reproducible(tiny_llama, icvs):
    steering = ICVSteering(icvs["llama"][0], 0.1)
    settings = dict(max_new_tokens=8, do_sample=True, stop_at_eos=False)
    first = generate(tiny_llama, PROMPTS, steering, seed=1, **settings)
    again = generate(tiny_llama, PROMPTS, steering, seed=1, **settings)
    other = generate(tiny_llama, PROMPTS, steering, seed=2, **settings)
    state = torch.random.get_rng_state()
    generate(tiny_llama, PROMPTS, steering, seed=3, **settings)
    assert torch.equal(state, torch.random.get_rng_state())  # the global RNG is untouched
    assert first.new_tokens == again.new_tokens
    assert first.new_tokens != other.new_tokens


def test_generation_input_errors(tiny_llama):
    with pytest.raises(IclMechError, match="no prompts"):
        generate(tiny_llama, [])
    with pytest.raises(IclMechError, match="no tokens"):
        generate(tiny_llama, [""])
    with pytest.raises(IclMechError, match="max_new_tokens"):
        generate(tiny_llama, PROMPTS, max_new_tokens=0)
    with pytest.raises(IclMechError, match="single tokens"):
        generate(tiny_llama, PROMPTS, stop_at=("The food",))


def test_generation_hooks_are_removed(tiny_llama, icvs):
    def broken(activation, hook):
        raise RuntimeError("inside generation")

    steering = ICVSteering(icvs["llama"][0], 0.1)
    with pytest.raises(RuntimeError, match="inside generation"):
        generate(tiny_llama, PROMPTS, steering, HookSpec("blocks.0.hook_resid_post", broken))
    count = sum(len(h.fwd_hooks) for h in tiny_llama.hook_dict.values())
    assert count == 0
