import pytest
import torch

from icl_mech import (
    Ablate,
    AddVector,
    Capture,
    HookSpec,
    IclMechError,
    Intervention,
    Patch,
    PromptBatch,
    attach,
    hooks,
    make,
    register,
    run,
    tasks,
)
from icl_mech.backends import finite_padding_rows
from icl_mech.evaluation import build_prompts

RESID = "blocks.1.hook_resid_post"


@pytest.fixture
def batch(tiny):
    task = tasks.load("sentiment")
    return PromptBatch.from_prompts(tiny, build_prompts(task, 1, task.examples[:3], seed=0))


def _hook_count(model):
    """Hooks on the model's hook points (a point the bridge names twice counted once)."""
    unique = {id(hp): hp for hp in model.hook_dict.values()}.values()
    return sum(len(hp.fwd_hooks) + len(hp.bwd_hooks) for hp in unique)


def test_hooks_are_gone_after_an_exception(tiny, batch):
    own = len(finite_padding_rows(tiny))  # the bridge's own, attached with every item
    with pytest.raises(RuntimeError, match="inside"):
        with attach(tiny, Capture(RESID), AddVector(RESID, torch.ones(tiny.cfg.d_model))):
            assert _hook_count(tiny) == 2 + own
            raise RuntimeError("inside")
    assert _hook_count(tiny) == 0


def test_hooks_are_gone_after_keyboard_interrupt(tiny, batch):
    def interrupt(activation, hook):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(tiny, batch, HookSpec(RESID, interrupt))
    assert _hook_count(tiny) == 0


def test_composition_follows_the_order_given(tiny, batch):
    value = torch.full((tiny.cfg.d_model,), 3.0)
    vector = torch.ones(tiny.cfg.d_model)
    first = Capture(RESID, positions="last")
    patch_then_add = [Patch(RESID, value), AddVector(RESID, vector), first]
    with torch.no_grad():
        run(tiny, batch, *patch_then_add)
    torch.testing.assert_close(first.activations[RESID], (value + vector).expand(len(batch), -1))
    second = Capture(RESID, positions="last")
    with torch.no_grad():
        run(tiny, batch, AddVector(RESID, vector), Patch(RESID, value), second)
    torch.testing.assert_close(second.activations[RESID], value.expand(len(batch), -1))


def test_patching_an_activation_with_its_own_value_changes_nothing(tiny, batch):
    capture = Capture(f"blocks.{tiny.cfg.n_layers - 2}.hook_resid_mid")
    with torch.no_grad():
        clean = run(tiny, batch, capture)
        own = capture.activations[capture.points]
        patched = run(tiny, batch, Patch(capture.points, own, positions="all"))
    torch.testing.assert_close(patched, clean, atol=0, rtol=0)


def test_patch_at_target_only_changes_the_target_row(tiny, batch):
    point = "blocks.0.hook_resid_post"
    with torch.no_grad():
        clean = run(tiny, batch)
        patched = run(tiny, batch, Patch(point, torch.zeros(tiny.cfg.d_model), "target"))
    torch.testing.assert_close(patched[:, :-1], clean[:, :-1], atol=0, rtol=0)
    assert (patched[:, -1] - clean[:, -1]).abs().max() > 1e-3


def test_add_vector_at_label_positions(tiny, batch):
    vector = torch.randn(tiny.cfg.d_model)
    before, after = Capture("blocks.0.hook_resid_pre"), Capture("blocks.0.hook_resid_pre")
    with torch.no_grad():
        run(tiny, batch, before, AddVector("blocks.0.hook_resid_pre", vector, "labels", 2.0), after)
    delta = (
        after.activations["blocks.0.hook_resid_pre"] - before.activations["blocks.0.hook_resid_pre"]
    )
    labels = batch.label_mask()
    torch.testing.assert_close(delta[labels], (2.0 * vector).expand(int(labels.sum()), -1))
    assert delta[~labels].abs().max() == 0


def test_zero_and_mean_ablation(tiny, batch):
    point = "blocks.0.hook_mlp_out"
    zero, mean, clean = Capture(point), Capture(point), Capture(point)
    with torch.no_grad():
        run(tiny, batch, clean)
        run(tiny, batch, Ablate(point, "template"), zero)
        run(tiny, batch, Ablate(point, "query", mode="mean"), mean)
    template, query = batch.mask("template"), batch.mask("query")
    assert zero.activations[point][template].abs().max() == 0
    torch.testing.assert_close(
        zero.activations[point][~template], clean.activations[point][~template]
    )
    expected = clean.activations[point][query].mean(0)
    torch.testing.assert_close(
        mean.activations[point][query], expected.expand(int(query.sum()), -1)
    )


def test_unknown_hook_point_names_the_point_and_suggests(tiny, batch):
    with pytest.raises(IclMechError, match="blocks.1.hook_resid_pots.*did you mean"):
        run(tiny, batch, Capture("blocks.1.hook_resid_pots"))
    assert _hook_count(tiny) == 0


def test_wrong_vector_width_fails_before_the_forward(tiny, batch):
    with pytest.raises(IclMechError, match="width 7"):
        with attach(tiny, AddVector(RESID, torch.ones(7))):
            raise AssertionError("must not get here")


def test_layers_out_of_range(tiny):
    with pytest.raises(IclMechError, match="layer 99 out of range"):
        hooks.points(tiny, "hook_resid_post", [99])


def test_batch_selector_without_batch_is_an_error(tiny, batch):
    with pytest.raises(IclMechError, match="needs a PromptBatch"):
        with attach(tiny, Patch(RESID, torch.zeros(tiny.cfg.d_model), "labels")):
            tiny(batch.tokens)


def test_catalogue_builds_kinds_from_data_and_takes_new_ones(tiny, batch):
    assert {"capture", "patch", "add", "ablate"} <= set(hooks.kinds())

    @register("test-scale")
    class Scale(Intervention):
        def __init__(self, point, factor):
            self.point, self.factor = point, factor

        def specs(self, model, batch):
            return [HookSpec(self.point, lambda act, hook: act * self.factor)]

    capture = Capture(RESID, "last")
    with torch.no_grad():
        run(tiny, batch, make("test-scale", point=RESID, factor=0.0), capture)
    assert capture.activations[RESID].abs().max() == 0
    with pytest.raises(IclMechError, match="already registered"):
        register("test-scale")(type("Other", (Intervention,), {"specs": lambda *a: []}))
    with pytest.raises(IclMechError, match="unknown kind"):
        make("no-such-kind")
    hooks.CATALOGUE.pop("test-scale")


def test_capture_one_position_per_row(tiny, batch):
    full, last = Capture(RESID), Capture(RESID, positions="target")
    with torch.no_grad():
        run(tiny, batch, full, last)
    torch.testing.assert_close(last.activations[RESID], full.activations[RESID][:, -1])
    with pytest.raises(IclMechError, match="several positions"):
        run(tiny, batch, Capture(RESID, positions="labels"))


def test_repr_is_short(tiny):
    text = repr(AddVector(RESID, torch.ones(tiny.cfg.d_model)))
    assert text.startswith("AddVector(point=") and f"Tensor[{tiny.cfg.d_model}]" in text
