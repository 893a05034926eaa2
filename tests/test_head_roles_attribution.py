"""Attribution patching: the first-order indirect effect of every head against finite
differences and against exact patching, batching, what it leaves on the model, its errors; the
residual-stream map against finite differences and an independent patch."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from spies import no_forward

from icl_mech import HookSpec, IclMechError, PromptBatch, attach, scoring, tasks
from icl_mech import tiny_model as make_tiny
from icl_mech.correlation import pearson, spearman
from icl_mech.function_vectors import (
    CaptureHeads,
    PatchHeads,
    effect_prompts,
    function_vector,
    indirect_effects,
    mean_head_outputs,
)
from icl_mech.head_roles import verified
from icl_mech.head_roles.residual_map import residual_map, same_length_twins
from icl_mech.icl_prompt import ICLPrompt
from icl_mech.threads import torch_threads

EPS = 1e-4  # finite-difference step, as a fraction of the full step towards the clean value
# the step on a float64 model that rounds to float32 inside its forward (``rounds_to_float32``):
# there the central difference at EPS carries float32 noise of about 1e-8 P(correct) / EPS
ROUNDED_EPS = 2e-2
HEADS = [(0, 1), (1, 3), (2, 0), (2, 2)]  # the three layers of the tiny models


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Two threads fight the other jobs on this 2-core machine; one is many times faster."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def antonym():
    return tasks.load("antonym")


@pytest.fixture(scope="module")
def sentiment():
    return tasks.load("sentiment")


@pytest.fixture(scope="module")
def float64():
    """A float64 copy of each tiny model (same seed, so the same weights as ``make_tiny``)."""
    return {arch: make_tiny(arch).to(torch.float64) for arch in ("gpt2", "llama")}


@pytest.fixture(scope="module")
def rounding(float64):
    """Which float64 tiny models still round to float32 inside their forward."""
    return {arch: rounds_to_float32(model) for arch, model in float64.items()}


def rounds_to_float32(model) -> bool:
    """Whether a float64 model's forward rounds to float32 somewhere. Nudged at the stream
    entering block 0 by 1e-9 (of its mean size) and by twice that, a float64 forward's logits
    move twice as far (measured: to 1.5e-6 of the move); one that passes through float32 loses
    such a nudge to rounding (measured: off by 2.0). The tiny llama does on the bridge:
    TransformerLens 4.3 runs Hugging Face's ``LlamaRMSNorm``, which normalises in float32, and
    takes the rotary attention's softmax in float32, whatever the model's dtype."""
    tokens = torch.arange(10, 20)[None]
    nudges = torch.randn(1, 10, model.cfg.d_model, generator=torch.Generator().manual_seed(0))

    def logits(scale: float) -> torch.Tensor:
        def nudge(x, hook):
            return x + scale * nudges.to(x) * x.abs().mean()

        with torch.no_grad(), attach(model, HookSpec("blocks.0.hook_resid_pre", nudge)):
            return model(tokens)[0].double()

    base = logits(0.0)
    once, twice = logits(1e-9) - base, logits(2e-9) - base
    return not torch.allclose(twice, 2 * once, rtol=1e-3, atol=1e-3 * float(once.abs().max()))


def skip_if_rounding(rounded: bool, arch: str) -> None:
    if rounded:
        pytest.skip(
            f"the float64 tiny {arch} rounds to float32 inside its forward on this backend "
            "(TransformerLens 4.3's bridge: Hugging Face's LlamaRMSNorm normalises in float32, "
            "the rotary attention's softmax is taken in float32), so float64 tolerances "
            "cannot hold; the float32 variant checks it"
        )


def derivative(moved: Callable[[float], float], rounded: bool) -> float:
    """d/dε moved(ε) at ε = 0: the central difference at ε = ±EPS; on a model that rounds to
    float32, the fourth-order one at ε = ±ROUNDED_EPS, ±2 ROUNDED_EPS (its noise, about
    1e-8 P(correct) / ROUNDED_EPS, well above float64's, its truncation error O(ε⁴))."""
    if not rounded:
        return (moved(EPS) - moved(-EPS)) / (2 * EPS)
    h = ROUNDED_EPS
    return (8 * (moved(h) - moved(-h)) - (moved(2 * h) - moved(-2 * h))) / (12 * h)


def no_hooks_left(model) -> bool:
    return all(not point.fwd_hooks and not point.bwd_hooks for point in model.hook_dict.values())


def forced(model, prompt) -> tuple[torch.Tensor, int, scoring.Gold]:
    """The prompt's tokens with its answer's bare tokens appended (teacher forcing), its
    length without them, and its gold answer."""
    batch = PromptBatch.from_prompts(model, [prompt])
    (gold,) = scoring.golds(model, [prompt])
    tokens = torch.cat([batch.tokens, torch.tensor([gold.bare], dtype=torch.long)], dim=1)
    return tokens, batch.seq_len, gold


def probability64(model, prompt, *items) -> float:
    """P(bare tokens, then the content token) from one full forward, in float64 throughout
    (``scoring.logit_probability`` works in float32)."""
    tokens, n, gold = forced(model, prompt)
    with torch.no_grad(), attach(model, *items):
        logits = model(tokens)
    logprobs = logits[0, n - 1 :].double().log_softmax(-1)
    return math.exp(sum(float(logprobs[step, t]) for step, t in enumerate(gold.tokens)))


def prompt_end(model, prompt) -> torch.Tensor:
    """A position mask of the forced tokens: the prompt's last token only."""
    tokens, n, _ = forced(model, prompt)
    at = torch.zeros(tokens.shape, dtype=torch.bool)
    at[:, n - 1] = True
    return at


def head_difference(model, prompt, head, z, mean, rounded: bool) -> float:
    """The finite difference (``derivative``) of P(correct) with the head's output at the
    prompt's last token set to z + ε (mean − z)."""
    at = prompt_end(model, prompt)

    def moved(eps):
        patch = PatchHeads([head], (z + eps * (mean - z))[None], positions=at)
        return probability64(model, prompt, patch)

    return derivative(moved, rounded)


# --- indirect effect: the first-order estimate ---------------------------------------------------

DTYPES = [
    pytest.param(
        torch.float64,
        id="float64",
    ),
    pytest.param(torch.float32, id="float32"),
]
# |attribution - finite difference| <= RTOL |finite difference| + ATOL * P(correct)
# float64: the estimate carries float32 rounding (scoring.logit_probability computes P(correct)
# in float32, and the effect is stored as a float32 patched probability minus the unpatched
# one: a few float32 ulps of P(correct)). Measured with the effect cast to float32: relative
# 2e-7 or less, 5.5e-6 on a small effect (4.7e-5 on the bridge's tiny gpt2); at most
# 7.5e-8 * P(correct) absolute.
# float32: the gradient of a float32 forward against the float64 twin (the same weights).
# Measured: relative 2.4e-5 or less, at most 1.1e-6 * P(correct) absolute; against the
# fourth-order difference on a float64 twin that rounds to float32 (the bridge's tiny llama),
# at most 1.8e-6 * P(correct) absolute (the difference's own noise included).
TOLERANCE = {torch.float64: (2e-6, 3e-7), torch.float32: (2e-4, 1e-5)}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_attribution_is_the_derivative_along_the_step_to_the_mean(
    arch, dtype, antonym, float64, rounding
):
    """For head (l, h) and shuffled prompt p, the attribution is d/dε P(correct) with the head's
    output at the prompt's last token set to z + ε (mean − z): a central difference at ε = ±1e-4
    on the float64 model (``derivative``). Prompt 0's answer 'outer' starts with a bare ' ' on
    the tiny tokenizer (teacher-forced); prompt 1's does not."""
    if dtype == torch.float64:
        skip_if_rounding(rounding[arch], arch)
    model = float64[arch] if dtype == torch.float64 else make_tiny(arch)
    reference = float64[arch]
    clean, shuffled = effect_prompts(antonym, 4, n_demonstrations=2, seed=0)
    golds = scoring.golds(reference, shuffled)
    assert golds[0].bare and not golds[1].bare, "the test needs a bare-token answer and a plain one"
    effect = indirect_effects(model, clean, shuffled, method="attribution", batch_size=4)
    means = mean_head_outputs(reference, clean, batch_size=4)
    torch.testing.assert_close(effect.mean_outputs.double(), means, atol=1e-6, rtol=1e-5)
    rtol, atol = TOLERANCE[dtype]
    for p in (0, 1):
        prompt = shuffled[p]
        base = probability64(reference, prompt)
        assert float(effect.shuffled_probability[p]) == pytest.approx(base, rel=1e-5)
        capture = CaptureHeads(HEADS)  # the heads' own outputs at the prompt's last token
        with torch.no_grad(), attach(reference, capture):
            reference(PromptBatch.from_prompts(reference, [prompt]).tokens)
        for i, (layer, head) in enumerate(HEADS):
            z = capture.outputs[0, i]
            difference = head_difference(
                reference, prompt, (layer, head), z, means[layer, head], rounding[arch]
            )
            estimate = float(effect.effects[p, layer, head])
            assert abs(difference) > 1e-6 * base  # the head moves P(correct)
            assert abs(estimate - difference) <= rtol * abs(difference) + atol * base, (
                f"{arch} {dtype} prompt {p} head {(layer, head)}: attribution {estimate:.6e}, "
                f"finite difference {difference:.6e}"
            )


def test_batched_attribution_equals_one_prompt_at_a_time(tiny, antonym):
    clean, shuffled = effect_prompts(antonym, 5, n_demonstrations=3, seed=0)
    assert scoring.bare_rows(scoring.golds(tiny, shuffled)), "a batch with a teacher-forced row"
    one = indirect_effects(tiny, clean, shuffled, batch_size=1, method="attribution")
    four = indirect_effects(tiny, clean, shuffled, batch_size=4, method="attribution")
    scale = float(one.effects.abs().max())
    assert scale > 0
    torch.testing.assert_close(four.effects, one.effects, atol=1e-5 * scale, rtol=1e-5)
    torch.testing.assert_close(four.shuffled_probability, one.shuffled_probability)
    torch.testing.assert_close(four.mean_outputs, one.mean_outputs, atol=1e-6, rtol=1e-5)
    assert four.forwards < one.forwards


def test_attribution_leaves_no_hook_no_gradient_and_the_flags_as_they_were(antonym, sentiment):
    model = make_tiny("llama")
    for i, parameter in enumerate(model.parameters()):  # a mix of flags, to see each restored
        parameter.requires_grad_(i % 2 == 0)
    flags = [p.requires_grad for p in model.parameters()]
    assert any(flags) and not all(flags)
    grad_mode = torch.is_grad_enabled()
    clean, shuffled = effect_prompts(antonym, 3, n_demonstrations=2, seed=0)
    effect = indirect_effects(model, clean, shuffled, method="attribution", batch_size=2)
    assert effect.method == "attribution" and bool(effect.effects.abs().sum() > 0)
    twin_clean, twin_shuffled = same_length_twins(model, *effect_prompts(sentiment, 2, 2, 0))[0]
    residual_map(model, twin_clean, twin_shuffled)
    assert no_hooks_left(model)
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    assert torch.is_grad_enabled() == grad_mode
    with torch.no_grad():  # and the model still runs as before
        tokens = PromptBatch.from_prompts(model, shuffled[:1]).tokens
        assert torch.isfinite(model(tokens)).all()


def test_a_misspelt_method_is_refused_before_any_forward(tiny_llama, antonym):
    clean, shuffled = effect_prompts(antonym, 2, n_demonstrations=2, seed=0)
    with no_forward(tiny_llama):
        with pytest.raises(IclMechError, match=r"method='atribution'.*did you mean 'attribution'"):
            indirect_effects(tiny_llama, clean, shuffled, method="atribution")
        with pytest.raises(IclMechError, match=r"\['exact', 'attribution'\]"):
            indirect_effects(tiny_llama, clean, shuffled, method="gradient")


@pytest.mark.embedded
def test_attribution_agrees_with_exact_patching_on_the_embedded_model(embedded):
    """SmolLM2, country_capital, 8 prompts, 4 late layers (36 heads). Measured (seed 0): Spearman
    0.97 and Pearson 0.998 over the 36 mean effects; the top 5 heads by exact effect are the
    same in both, attribution/exact 0.93..1.10 on them."""
    capitals = tasks.load("country_capital")
    clean, shuffled = effect_prompts(capitals, 8, n_demonstrations=5, seed=0)
    layers = [14, 18, 20, 21]
    with torch_threads(1):
        exact = indirect_effects(embedded, clean, shuffled, layers=layers, batch_size=8)
        estimate = indirect_effects(
            embedded, clean, shuffled, layers=layers, batch_size=8, method="attribution"
        )
    assert (exact.method, estimate.method) == ("exact", "attribution")
    assert estimate.forwards < exact.forwards
    torch.testing.assert_close(estimate.shuffled_probability, exact.shuffled_probability)
    torch.testing.assert_close(estimate.mean_outputs, exact.mean_outputs)
    e, a = exact.mean.flatten(), estimate.mean.flatten()
    assert float(e.abs().max()) > 0.05, "no head moves P(answer): the comparison would be empty"
    for index in e.abs().argsort(descending=True)[:5].tolist():  # the heads that matter
        ratio = float(a[index] / e[index])
        assert 1 / 3 < ratio < 3, f"head {divmod(index, embedded.cfg.n_heads)}: ratio {ratio}"
    assert spearman(a.numpy(), e.numpy()) > 0.8
    assert pearson(a.numpy(), e.numpy()) > 0.9
    top = estimate.top(5)
    assert len(set(top) & set(exact.top(5))) >= 3
    assert top[0] == exact.top(1)[0]
    vector = function_vector(embedded, estimate, k=3)
    assert list(vector.heads) == top[:3] and vector.values.shape == (embedded.cfg.d_model,)
    assert bool(torch.isfinite(vector.values).all()) and float(vector.values.norm()) > 0
    assert "method='attribution'" in repr(estimate)


# --- the residual-stream map ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def twins(sentiment, float64):
    """A (clean, shuffled) sentiment pair of equal length for each float64 tiny model."""
    clean, shuffled = effect_prompts(sentiment, 4, n_demonstrations=2, seed=0)
    return {arch: same_length_twins(model, clean, shuffled)[0] for arch, model in float64.items()}


@pytest.fixture(scope="module")
def maps(float64, twins):
    """The residual map of each float64 tiny model, with the exact map of layers 0 and 2."""
    return {
        arch: residual_map(model, *twins[arch], layers=[0, 2], exact=True)
        for arch, model in float64.items()
    }


def streams(model, prompt, layers) -> torch.Tensor:
    """``[layer, pos, d_model]``: the stream entering each block of ``layers``, from a full
    forward of the prompt."""
    tokens, _, _ = forced(model, prompt)
    captured = {}

    def keep(x, hook):
        captured[hook.name] = x[0].detach().clone()

    names = [f"blocks.{layer}.hook_resid_pre" for layer in layers]
    with torch.no_grad(), attach(model, *[HookSpec(name, keep) for name in names]):
        model(tokens)
    return torch.stack([captured[name] for name in names])


def set_stream(layer: int, position: int, value: torch.Tensor) -> HookSpec:
    def put(x, hook):
        x = x.clone()
        x[:, position] = value.to(x)
        return x

    return HookSpec(f"blocks.{layer}.hook_resid_pre", put)


def stream_difference(model, prompt, layer, position, s, c, rounded: bool) -> float:
    """The finite difference (``derivative``) of P(correct) with the stream entering block
    ``layer`` at ``position`` set to s + ε (c − s)."""

    def moved(eps):
        return probability64(model, prompt, set_stream(layer, position, s + eps * (c - s)))

    return derivative(moved, rounded)


def changed_positions(model, clean, shuffled) -> list[int]:
    a = PromptBatch.from_prompts(model, [clean]).tokens[0]
    b = PromptBatch.from_prompts(model, [shuffled]).tokens[0]
    return torch.nonzero(a != b).flatten().tolist()


# |attribution - finite difference| <= RTOL |finite difference| + ATOL * P(correct)
# float64: relative 1e-5 (measured 2e-7 or less), with 1e-8 * P(correct) absolute for
# scoring's float32 softmax. float32 (the map of the float32 model against differences on its
# float64 twin): measured relative 2.5e-5 or less, at most 8.6e-7 * P(correct) absolute;
# against the fourth-order difference on a twin that rounds to float32, at most
# 1.4e-6 * P(correct) (the difference's own noise included).
MAP_TOLERANCE = {torch.float64: (1e-5, 1e-8), torch.float32: (2e-4, 1e-5)}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_the_residual_map_is_the_derivative_along_the_step_to_clean(
    arch, dtype, float64, rounding, twins, maps
):
    """Cell (l, p) of the map is d/dε P(correct) with the stream entering block l at position
    p set to s + ε (c − s) (s its shuffled value, c its clean one): central differences at
    ε = ±1e-4 on the float64 model (``derivative``). The float32 variant maps the float32
    model (the same weights) against the same differences."""
    model, (clean, shuffled) = float64[arch], twins[arch]
    if dtype == torch.float64:
        skip_if_rounding(rounding[arch], arch)
        result = maps[arch]
    else:
        result = residual_map(make_tiny(arch), clean, shuffled, layers=[0, 2])
    rtol, atol = MAP_TOLERANCE[dtype]
    n = len(result.tokens)
    first, second = changed_positions(model, clean, shuffled)[:2]
    cells = [(0, first), (0, second), (2, second), (2, n - 1), (2, first + 3)]
    layers = sorted({layer for layer, _ in cells})
    shuffled_stream, clean_stream = streams(model, shuffled, layers), streams(model, clean, layers)
    base = probability64(model, shuffled)
    assert result.probability == pytest.approx(base, rel=1e-5)
    for layer, position in cells:
        s = shuffled_stream[layers.index(layer), position]
        c = clean_stream[layers.index(layer), position]
        difference = stream_difference(model, shuffled, layer, position, s, c, rounding[arch])
        estimate = float(result.attribution[result.layers.index(layer), position])
        assert abs(difference) > 1e-6 * base
        assert abs(estimate - difference) <= rtol * abs(difference) + atol * base, (
            f"{arch} {dtype} cell {(layer, position)}: attribution {estimate:.6e}, "
            f"finite difference {difference:.6e}"
        )


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_the_exact_map_is_the_patched_change(arch, float64, twins, maps):
    """Independently: a full forward with one (layer, position) of the stream set to its clean
    value, P(correct) by ``scoring`` (float32), minus the unpatched one."""
    model, (clean, shuffled), result = float64[arch], twins[arch], maps[arch]
    n = len(result.tokens)
    first, second = changed_positions(model, clean, shuffled)[:2]
    cells = [(0, first), (0, second), (2, second), (2, n - 1), (2, first + 3)]
    clean_stream = streams(model, clean, result.layers)
    tokens, n_prompt, gold = forced(model, shuffled)

    def scored(*items) -> float:
        with torch.no_grad(), attach(model, *items):
            logits = model(tokens)
        return float(scoring.logit_probability(logits[:, n_prompt - 1 :], [gold])[0])

    base = scored()
    for layer, position in cells:
        i = result.layers.index(layer)
        change = scored(set_stream(layer, position, clean_stream[i, position])) - base
        assert abs(change) > 0
        # measured: bit-identical; allowed: a float32 ulp of P(correct)
        assert float(result.exact[i, position]) == pytest.approx(change, rel=1e-6, abs=1e-7 * base)
    # the map's exact change is what the attribution approximates: the signs agree on the cells
    # that hold most of the change, and the cells that change rank alike. Not on every cell: a
    # whole step to the clean stream can leave the first order behind (the bridge's tiny gpt2,
    # cell (0, 96): +6.0e-8 to first order, -2.4e-7 patched, turning over near ε = 0.25).
    # Measured on both backends' tiny models: 0.70 to 1.00 of the change; rank correlation
    # 0.89 to 1.00.
    exact, first_order = result.exact.flatten().double(), result.attribution.flatten()
    agree = torch.sign(exact) == torch.sign(first_order)
    assert float(exact.abs()[agree].sum()) > 0.5 * float(exact.abs().sum())
    moved = exact != 0
    assert spearman(first_order[moved].numpy(), exact[moved].numpy()) > 0.8


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_positions_whose_tokens_agree_are_zero_at_layer_0(arch, float64, twins, maps):
    """The stream entering block 0 depends on the token (and its position) alone: where the
    twins share the token, clean and shuffled streams are equal and both maps are exactly 0."""
    model, (clean, shuffled), result = float64[arch], twins[arch], maps[arch]
    changed = changed_positions(model, clean, shuffled)
    assert 0 < len(changed) < len(result.tokens) // 10
    same = torch.ones(len(result.tokens), dtype=torch.bool)
    same[changed] = False
    first = result.layers.index(0)
    assert torch.equal(
        result.attribution[first, same], torch.zeros(int(same.sum()), dtype=torch.float64)
    )
    assert torch.equal(result.exact[first, same], torch.zeros(int(same.sum())))
    assert bool((result.attribution[first, ~same] != 0).all())
    assert bool((result.exact[first, ~same] != 0).all())


def test_residual_map_frame_has_one_row_per_layer_and_position(float64, twins, maps):
    result = maps["llama"]
    frame = result.to_frame()
    n = len(result.tokens)
    assert len(frame) == len(result.layers) * n
    assert not frame.duplicated(["layer", "position"]).any()
    assert sorted(set(frame["layer"])) == [0, 2]
    assert sorted(set(frame["position"])) == list(range(n))
    assert {"attribution", "exact", "token", "role"} <= set(frame.columns)
    row = frame[(frame["layer"] == 2) & (frame["position"] == n - 1)].iloc[0]
    assert row["attribution"] == pytest.approx(float(result.attribution[1, n - 1]))
    assert row["exact"] == pytest.approx(float(result.exact[1, n - 1]))
    agreement = result.agreement()
    assert agreement["n_cells"] == len(frame)


def test_twins_of_different_length_are_refused_naming_both(tiny_llama, antonym):
    """Deranged answers keep a prompt's token count, so build the pair by hand: the same query,
    a second demonstration of another length."""
    query, first, short, long = antonym.examples[:4]
    clean = ICLPrompt.build(antonym, [first, short], query)
    other = ICLPrompt.build(antonym, [first, long], query)
    a, b = (PromptBatch.from_prompts(tiny_llama, [p]).seq_len for p in (clean, other))
    assert a != b
    assert same_length_twins(tiny_llama, [clean, clean], [other, clean]) == [(clean, clean)]
    with no_forward(tiny_llama), pytest.raises(IclMechError) as error:
        residual_map(tiny_llama, clean, other)
    message = str(error.value)
    assert f"{a} tokens" in message and f"twin {b}" in message and "same_length_twins" in message


def test_verified_recomputes_the_candidates_layers_exactly(tiny_llama):
    """AtP*'s cheap fix here: the layers holding the top candidates become exact, the rest
    stay the estimate, and the passes of both are counted."""
    clean, shuffled = effect_prompts(tasks.load("antonym"), 4, 2, seed=0)
    with torch_threads(1):
        estimate = indirect_effects(tiny_llama, clean, shuffled, method="attribution")
        exact = indirect_effects(tiny_llama, clean, shuffled)
        checked = verified(tiny_llama, clean, shuffled, estimate, top=2)
    layers = sorted({layer for layer, _ in estimate.top(2)})
    for i, layer in enumerate(estimate.layers):
        expected = exact if layer in layers else estimate
        torch.testing.assert_close(
            checked.effects[:, i], expected.effects[:, i], rtol=1e-5, atol=1e-7
        )
    assert checked.forwards > estimate.forwards
    assert checked.method.startswith("attribution, exact at layers")
