"""Linear self-attention vs one step of gradient descent (icl_mech.gd)."""

import pathlib

import numpy as np
import pytest
import torch

from icl_mech.errors import IclMechError
from icl_mech.gd import (
    LinearSelfAttentionModel,
    LSAConfig,
    OneStepGD,
    RegressionTasks,
    TeacherFeatures,
    TrainConfig,
    build_tokens,
    compare,
    constructed_model,
    interpolate,
    line_search_eta,
    regression_loss,
    sensitivities,
    sensitivity_cosine,
    split_tokens,
    train,
)
from icl_mech.gd.construct import constructed_like
from icl_mech.gd.data import make_generator
from icl_mech.runner import reproduce
from icl_mech.threads import torch_threads


@pytest.fixture(autouse=True)
def one_thread():
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> tuple[dict, pathlib.Path]:
    out_dir = tmp_path_factory.mktemp("icl_gd")
    report = reproduce("icl-gd", quick=True, out=out_dir, progress=False)
    return report.headline, out_dir


def autograd_gd_step(xs, ys, x_test, eta):
    """Independent reference: W_1 = W_0 - eta * dL/dW at W_0 = 0, by autograd."""
    w = torch.zeros(xs.shape[0], ys.shape[-1], xs.shape[-1], dtype=xs.dtype, requires_grad=True)
    predictions = torch.einsum("boi,bni->bno", w, xs)
    loss = 0.5 * (predictions - ys).pow(2).sum(dim=(1, 2)) / xs.shape[1]
    (gradient,) = torch.autograd.grad(loss.sum(), w)
    return torch.einsum("boi,bi->bo", -eta * gradient, x_test)


@pytest.mark.parametrize("d_in, d_out, n_context", [(10, 1, 10), (4, 3, 7), (7, 2, 25)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_constructed_layer_equals_explicit_gd_step(d_in, d_out, n_context, dtype):
    tasks = RegressionTasks(d_in=d_in, n_context=n_context, d_out=d_out)
    batch = tasks.sample(256, make_generator(d_in + n_context), dtype=dtype)
    eta = 0.7 + 0.1 * d_out
    model = constructed_model(d_in, d_out, eta).to(dtype)
    expected = autograd_gd_step(batch.xs, batch.ys, batch.x_test, eta)
    actual = model(batch.tokens())
    assert torch.allclose(actual, expected, atol=1e-5, rtol=0)
    assert torch.allclose(OneStepGD(eta, d_in)(batch.tokens()), expected, atol=1e-5, rtol=0)


def test_constructed_layer_with_embedding_is_gd_on_features():
    trained_shape = LinearSelfAttentionModel(LSAConfig(d_in=5, d_embed=8, seed=3))
    model = constructed_like(trained_shape, eta=0.9).double()
    batch = RegressionTasks(d_in=5).sample(128, make_generator(4), dtype=torch.float64)
    m = model.embed
    expected = autograd_gd_step(m(batch.xs), batch.ys, m(batch.x_test), 0.9)
    assert torch.allclose(model(batch.tokens()), expected, atol=1e-6, rtol=0)


def finite_difference_sensitivities(predictor, tokens, d_in, h=1e-6):
    columns = []
    for i in range(d_in):
        step = torch.zeros_like(tokens)
        step[:, -1, i] = h
        columns.append((predictor(tokens + step) - predictor(tokens - step)) / (2 * h))
    return torch.stack(columns, dim=-1)


@pytest.mark.parametrize("d_embed", [None, 6])
def test_sensitivity_cosine_equals_finite_difference_estimate(d_embed):
    model = LinearSelfAttentionModel(LSAConfig(d_in=5, d_out=2, d_embed=d_embed, init_std=0.3))
    model = model.double()
    reference = OneStepGD(eta=1.3, d_in=5, features=None if d_embed is None else model.features)
    tokens = RegressionTasks(d_in=5, d_out=2).sample(64, make_generator(1), torch.float64).tokens()
    with torch.no_grad():
        fd_model = finite_difference_sensitivities(model, tokens, 5)
        fd_reference = finite_difference_sensitivities(reference, tokens, 5)
    assert torch.allclose(sensitivities(model, tokens, 5), fd_model, atol=1e-7)
    fd_cosine = torch.nn.functional.cosine_similarity(
        fd_model.flatten(1), fd_reference.flatten(1), dim=-1
    ).mean()
    assert sensitivity_cosine(model, reference, tokens, 5) == pytest.approx(
        float(fd_cosine), abs=1e-6
    )


def test_line_search_finds_the_loss_minimum():
    tasks = RegressionTasks()
    eta = line_search_eta(tasks, n_tasks=4096, seed=5, dtype=torch.float64)
    batch = tasks.held_out(4096, seed=5, dtype=torch.float64)

    def loss(rate):
        return float(regression_loss(OneStepGD(rate, tasks.d_in)(batch.tokens()), batch.y_test))

    assert loss(eta) < min(loss(0.95 * eta), loss(1.05 * eta))


def closed_form_gd(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(eta*, loss at eta*) of one GD step from W = 0 on tasks x [n, N + 1, d], y [n, N + 1]
    (last token: the query). The prediction is eta * g, g = 1/N sum_j y_j <x_j, x_test>, so the
    loss 1/2 mean (eta g - y)^2 is least squares in eta: eta* = <g, y> / <g, g>."""
    g = np.einsum("bn,bn->b", y[:, :-1], np.einsum("bni,bi->bn", x[:, :-1], x[:, -1]))
    g /= x.shape[1] - 1
    eta = float(g @ y[:, -1] / (g @ g))
    return eta, float(0.5 * np.mean((eta * g - y[:, -1]) ** 2))


def test_one_step_gd_loss_is_pinned_by_the_task_distribution():
    """von Oswald et al.'s setting (x ~ U(-1, 1), d = N = 10, W ~ N(0, I)) sampled here with
    numpy, not with icl_mech: eta* = 1.52, loss 0.82 (0.84 on the reproduction's evaluation
    sample). icl_mech's line search and one-step-GD loss on its own tasks must agree, which a
    wrong task distribution (range of x, scale of W, N, d) would not."""
    rng = np.random.default_rng(0)
    n, d, n_context = 60_000, 10, 10
    x = rng.uniform(-1, 1, size=(n, n_context + 1, d))
    y = np.einsum("bi,bni->bn", rng.standard_normal((n, d)), x)
    eta, loss = closed_form_gd(x, y)
    assert 1.47 < eta < 1.57 and 0.79 < loss < 0.86
    tasks = RegressionTasks()
    found = line_search_eta(tasks, n_tasks=60_000, seed=11, dtype=torch.float64)
    batch = tasks.held_out(60_000, seed=12, dtype=torch.float64)
    gd_loss = float(regression_loss(OneStepGD(found, 10)(batch.tokens()), batch.y_test))
    assert found == pytest.approx(eta, abs=0.04) and gd_loss == pytest.approx(loss, abs=0.03)
    # on icl_mech's own sample, the line search is exactly the closed form
    own = tasks.held_out(4096, seed=11, dtype=torch.float64)
    xs = torch.cat([own.xs, own.x_test[:, None]], 1).numpy()
    ys = torch.cat([own.ys, own.y_test[:, None]], 1)[..., 0].numpy()
    exact_eta, exact_loss = closed_form_gd(xs, ys)
    assert line_search_eta(tasks, n_tasks=4096, seed=11, dtype=torch.float64) == pytest.approx(
        exact_eta, rel=1e-9
    )
    predicted = OneStepGD(exact_eta, 10)(own.tokens())
    assert float(regression_loss(predicted, own.y_test)) == pytest.approx(exact_loss, rel=1e-9)


def test_quick_reproduction_gets_within_5_percent_of_gd(quick_run):
    result, _ = quick_run
    assert abs(result["loss_ratio"] - 1) <= 0.05
    # the GD reference itself, pinned (see test_one_step_gd_loss_is_pinned_by_the_task_distribution)
    assert result["eta"] == pytest.approx(1.52, abs=0.08)
    assert result["gd_loss"] == pytest.approx(0.83, abs=0.05)
    assert result["sensitivity_cosine"] > 0.95


def test_quick_reproduction_writes_figures_and_table(quick_run):
    result, out_dir = quick_run
    for name in ("training_curve", "alignment", "interpolation", "kernelised"):
        assert (out_dir / f"icl_gd_{name}.png").stat().st_size > 0
    assert (out_dir / "icl_gd_results.csv").read_text().startswith("variant,")
    assert "| kernelised |" in (out_dir / "icl_gd_results.md").read_text()
    assert result["kernel_trained_loss"] < result["kernel_gd_on_x_loss"]


def test_interpolation_endpoints_are_trained_and_gd_losses():
    tasks = RegressionTasks(d_in=4, n_context=6)
    model = LinearSelfAttentionModel(LSAConfig(d_in=4, init_std=0.3, seed=2))
    constructed = constructed_like(model, eta=1.2)
    batch = tasks.held_out(512, seed=3)
    curve = interpolate(model, constructed, batch, alphas=[0.0, 0.5, 1.0])
    alignment = compare(model, OneStepGD(1.2, 4), batch)
    assert curve.losses[0] == pytest.approx(alignment.model_loss, rel=1e-5)
    assert curve.losses[-1] == pytest.approx(alignment.gd_loss, rel=1e-5)
    assert list(curve.to_frame().columns) == ["alpha", "loss"]


def test_training_is_deterministic_given_seed():
    tasks = RegressionTasks(d_in=4, n_context=5)
    config = TrainConfig(steps=15, batch_size=32, eval_every=5, eval_tasks=64, progress=False)
    weights = []
    for _ in range(2):
        model = LinearSelfAttentionModel(LSAConfig(d_in=4, seed=7))
        history = train(model, tasks, config).to_frame()
        weights.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.equal(weights[0], weights[1])
    assert list(history["step"]) == [0, 5, 10, 15]


def test_tokens_put_the_query_last_with_zero_target():
    batch = RegressionTasks(d_in=3, n_context=4, d_out=2).sample(5, make_generator(0))
    tokens = batch.tokens()
    assert tokens.shape == (5, 5, 5)
    assert torch.equal(tokens[:, -1, 3:], torch.zeros(5, 2))
    xs, ys, x_test = split_tokens(tokens, 3)
    assert torch.equal(xs, batch.xs) and torch.equal(ys, batch.ys)
    assert torch.equal(x_test, batch.x_test)


def test_mismatched_dimensions_raise_clear_errors():
    model = LinearSelfAttentionModel(LSAConfig(d_in=10, d_out=1))
    wrong = RegressionTasks(d_in=4).sample(2, make_generator(0)).tokens()
    with pytest.raises(IclMechError, match=r"expects tokens \[batch, n_context \+ 1 >= 2, 11\]"):
        model(wrong)
    with pytest.raises(IclMechError, match="d_in"):
        train(model, RegressionTasks(d_in=4), TrainConfig(steps=1, progress=False))
    with pytest.raises(IclMechError, match="x_test has d_in=3"):
        build_tokens(torch.zeros(2, 5, 4), torch.zeros(2, 5, 1), torch.zeros(2, 3))
    with pytest.raises(IclMechError, match="batch/context sizes disagree"):
        build_tokens(torch.zeros(2, 5, 4), torch.zeros(2, 6, 1), torch.zeros(2, 4))
    with pytest.raises(IclMechError, match="teacher features take d_in=3"):
        RegressionTasks(d_in=10, teacher=TeacherFeatures.random(3, 8))
    with pytest.raises(IclMechError, match="n_context must be positive"):
        RegressionTasks(n_context=0)
    with pytest.raises(IclMechError, match="d_model"):
        interpolate(model, constructed_model(4, 1, 1.0), RegressionTasks().held_out(4, seed=0))
    with pytest.raises(IclMechError, match="one GD step corresponds to one layer"):
        constructed_like(LinearSelfAttentionModel(LSAConfig(n_layers=2)), eta=1.0)
    assert issubclass(IclMechError, ValueError)


def test_hook_points_work_with_attach_and_capture():
    from icl_mech.hooks import HookSpec, attach
    from icl_mech.interventions import Capture

    model = LinearSelfAttentionModel(LSAConfig(d_in=4, n_layers=2, init_std=0.3))
    tokens = RegressionTasks(d_in=4, n_context=6).sample(3, make_generator(0)).tokens()
    names = [f"layers.{layer}.hook_{kind}" for layer in (0, 1) for kind in ("q", "k", "v")]
    names += ["hook_embed", "layers.0.hook_attn", "layers.0.hook_out"]
    capture = Capture(names)
    with attach(model, capture):
        prediction = model(tokens)
    assert capture.activations["layers.1.hook_q"].shape == (3, 7, 5)
    attention = capture.activations["layers.0.hook_attn"]
    assert attention.shape == (3, 7, 7)
    assert torch.equal(attention[..., -1], torch.zeros(3, 7))  # the query is never a key
    assert torch.equal(capture.activations["hook_embed"], tokens)

    def zero(activation, hook):
        return torch.zeros_like(activation)

    ablated = [HookSpec(f"layers.{layer}.hook_out", zero) for layer in (0, 1)]
    with attach(model, *ablated):
        assert torch.equal(model(tokens), torch.zeros(3, 1))
    assert not model.list_hooks()
    assert torch.equal(model(tokens), prediction)
