"""I2CL: context vectors, the injection at every layer and position, and the calibration of
its coefficients alone."""

import pytest
import torch

from icl_mech import IclMechError, attach, tasks, tiny_model
from icl_mech.batching import encode_text
from icl_mech.context_vectors import (
    ContextVectors,
    InjectContext,
    calibrate,
    context_vectors,
    demonstration_text,
    per_class,
)
from icl_mech.context_vectors.calibrate import answer_loss, schedule
from icl_mech.context_vectors.injection import MODULES
from icl_mech.icl_prompt import ICLPrompt
from icl_mech.interventions import Capture
from icl_mech.prompts import Demonstration
from icl_mech.scoring import golds


@pytest.fixture(scope="module")
def task():
    return tasks.load("sentiment")


@pytest.fixture(scope="module")
def demos(task):
    return per_class(task, 2, seed=0)


def _logits(model, text, *items):
    tokens = torch.tensor([encode_text(model, text)])
    with torch.no_grad(), attach(model, *items):
        return model(tokens)


def _outputs(model, text, layers):
    """Every layer's attention and MLP output at the text's last token, read by a Capture."""
    names = [f"blocks.{layer}.hook_{m}_out" for layer in layers for m in MODULES]
    capture = Capture(names, positions="last")
    _logits(model, text, capture)
    return torch.stack([capture.activations[n][0] for n in names]).view(len(layers), 2, -1)


def test_context_vectors_of_one_demonstration_are_its_outputs(tiny, task, demos):
    vectors = context_vectors(tiny, task, demos[:1])
    expected = _outputs(tiny, demonstration_text(task, demos[0]), range(tiny.cfg.n_layers))
    torch.testing.assert_close(vectors.values, expected, atol=1e-5, rtol=1e-5)
    assert vectors.values.shape == (tiny.cfg.n_layers, 2, tiny.cfg.d_model)


def test_context_vectors_are_the_mean_and_batching_changes_nothing(tiny, task, demos):
    one_by_one = context_vectors(tiny, task, demos, batch_size=1)
    together = context_vectors(tiny, task, demos, batch_size=4)
    torch.testing.assert_close(one_by_one.values, together.values, atol=1e-5, rtol=1e-5)
    each = [context_vectors(tiny, task, [d]).values for d in demos]
    torch.testing.assert_close(together.values, torch.stack(each).mean(0), atol=1e-5, rtol=1e-5)


def test_a_one_b_zero_and_strength_zero_change_nothing(tiny, task, demos):
    vectors = context_vectors(tiny, task, demos)
    query = ICLPrompt.zero_shot(task, "a fine film").text
    plain = _logits(tiny, query)
    identity = torch.zeros_like(vectors.coefficients)
    identity[..., 0] = 1.0
    same = vectors.with_coefficients(identity)
    assert torch.equal(_logits(tiny, query, same.intervention()), plain)
    assert torch.equal(_logits(tiny, query, vectors.intervention(strength=0.0)), plain)
    assert not torch.allclose(_logits(tiny, query, vectors.intervention()), plain)


def test_the_injection_is_a_times_out_plus_b_times_cv_at_every_position(tiny_llama, task, demos):
    vectors = context_vectors(tiny_llama, task, demos)
    coefficients = torch.rand_like(vectors.coefficients) + 0.5
    chosen = vectors.with_coefficients(coefficients)
    text = ICLPrompt.zero_shot(task, "dull").text
    layer = tiny_llama.cfg.n_layers - 1  # its input depends on earlier injections: read both
    names = [f"blocks.{layer}.hook_{m}_out" for m in MODULES]
    before, after = Capture(names), Capture(names)
    # a capture attached before the injection sees the raw output, one after it the result
    _logits(tiny_llama, text, before, chosen.intervention(), after)
    for m, name in enumerate(names):
        a, b = coefficients[-1, m]
        expected = a * before.activations[name] + b * vectors.values[-1, m]
        torch.testing.assert_close(after.activations[name], expected, atol=1e-5, rtol=1e-5)


def test_calibration_learns_only_the_coefficients(tiny_gpt2, task, demos):
    vectors = context_vectors(tiny_gpt2, task, demos)
    before = {k: v.clone() for k, v in tiny_gpt2.state_dict().items()}
    flags = {n: p.requires_grad for n, p in tiny_gpt2.named_parameters()}
    calibrated = calibrate(tiny_gpt2, vectors, task, demos, epochs=6, lr=0.05, seed=1)
    after = tiny_gpt2.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in tiny_gpt2.parameters())
    assert {n: p.requires_grad for n, p in tiny_gpt2.named_parameters()} == flags
    assert not torch.equal(calibrated.coefficients, vectors.coefficients)
    assert not calibrated.coefficients.requires_grad
    assert torch.equal(calibrated.values, vectors.values)
    record = calibrated.provenance["calibration"]
    assert record["epochs"] == 6 and len(record["losses"]) == 6
    assert record["losses"][-1] < record["losses"][0]


def test_the_calibration_gradient_matches_finite_differences(tiny_gpt2, task, demos):
    """d loss / d b of one layer and module, by autograd through the hooks and by ±ε."""
    vectors = context_vectors(tiny_gpt2, task, demos)
    prompts = [ICLPrompt.zero_shot(task, d) for d in demos]
    gold = golds(tiny_gpt2, prompts)
    layer, module = tiny_gpt2.cfg.n_layers // 2, 1

    def loss_at(coefficients):
        inject = InjectContext(vectors.values, coefficients, vectors.layers)
        with attach(tiny_gpt2, inject):
            return answer_loss(tiny_gpt2, prompts, gold)

    coefficients = vectors.coefficients.clone().double().requires_grad_(True)
    loss_at(coefficients).backward()
    analytic = float(coefficients.grad[layer, module, 1])
    eps, step = 1e-2, torch.zeros_like(vectors.coefficients)
    step[layer, module, 1] = eps
    with torch.no_grad():
        numeric = loss_at(vectors.coefficients + step) - loss_at(vectors.coefficients - step)
    numeric = float(numeric) / (2 * eps)
    assert abs(analytic - numeric) <= 2e-2 * abs(numeric) + 1e-4, (analytic, numeric)
    assert abs(analytic) > 1e-6


def test_calibration_noise_is_seeded(tiny_gpt2, task, demos):
    vectors = context_vectors(tiny_gpt2, task, demos)
    runs = [calibrate(tiny_gpt2, vectors, task, demos, epochs=2, seed=s) for s in (3, 3, 4)]
    assert torch.equal(runs[0].coefficients, runs[1].coefficients)
    assert not torch.equal(runs[0].coefficients, runs[2].coefficients)


def test_the_schedule_warms_up_then_decays():
    factors = [schedule(step, 5, 100) for step in range(101)]
    assert factors[0] == 0 and factors[5] == pytest.approx(1.0, abs=0.01)
    assert all(a >= b for a, b in zip(factors[5:], factors[6:]))
    assert factors[-1] == pytest.approx(0.0, abs=1e-12)


def test_save_load_round_trips_and_is_refused_on_another_width(tiny_llama, task, demos, tmp_path):
    vectors = context_vectors(tiny_llama, task, demos)
    calibrated = calibrate(tiny_llama, vectors, task, demos, epochs=1)
    loaded = ContextVectors.load(calibrated.save(tmp_path / "i2cl"), model=tiny_llama)
    assert torch.equal(loaded.values, calibrated.values)
    assert torch.equal(loaded.coefficients, calibrated.coefficients)
    assert (
        loaded.provenance["calibration"]["losses"] == calibrated.provenance["calibration"]["losses"]
    )
    assert loaded.calibrated and "calibrated" in repr(loaded)
    with pytest.raises(IclMechError, match="width 64"):
        ContextVectors.load(tmp_path / "i2cl", model=tiny_model("llama", d_model=32))
    frame = loaded.to_frame()
    assert list(frame.columns) == ["layer", "module", "norm", "a", "b"]
    assert len(frame) == 2 * tiny_llama.cfg.n_layers


def test_bad_inputs_are_refused_before_any_forward(tiny_gpt2, task, demos):
    vectors = context_vectors(tiny_gpt2, task, demos)
    with pytest.raises(IclMechError, match="minibatches of 9"):
        calibrate(tiny_gpt2, vectors, task, demos, batch_size=9)
    with pytest.raises(IclMechError, match="noise must be >= 0"):
        calibrate(tiny_gpt2, vectors, task, demos, noise=-1.0)
    with pytest.raises(IclMechError, match="demonstration 1 is a str"):
        context_vectors(tiny_gpt2, task, [demos[0], "great film -> positive"])
    with pytest.raises(IclMechError, match="no demonstrations"):
        context_vectors(tiny_gpt2, task, [])
    with pytest.raises(IclMechError, match="per class asked"):
        per_class(task, 10_000)
    with pytest.raises(IclMechError, match="not \\[99\\]"):
        vectors.intervention(layers=[99])
    with pytest.raises(TypeError, match="keyword arguments only"):
        vectors.apply(tiny_gpt2, 5)


def test_per_class_draws_n_of_each_class(task):
    chosen = per_class(task, 3, seed=2)
    assert sorted(d.y for d in chosen) == sorted(c for c in task.classes for _ in range(3))
    io = tasks.load("antonym")
    assert len(per_class(io, 4)) == 4 and all(isinstance(d, Demonstration) for d in io.examples)
