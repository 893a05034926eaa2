"""Every registry kind moves its tensors to the device and dtype of the activation it touches.

Dtype: each kind gets its value in another dtype than the model's (float64 into float32, float32
into float64 and bfloat16) and must give the result of the value in the model's own dtype.
Values are rounded to bfloat16 first, so every cast between the three dtypes is exact.

Device: a CPU has one real device, so hook functions run on ``meta`` activations (shapes and
dtypes, no values) under ``OneDevicePerCall``, which fails any torch call mixing devices — as a
GPU does, and stricter: a CPU index tensor into a GPU tensor is refused too. A tensor left on
the CPU, or put on ``cfg.device`` instead of the activation's device, fails these tests.
"""

from collections.abc import Callable
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from icl_mech import Ablate, AddVector, Capture, Patch, PromptBatch, run, tasks, tiny_model
from icl_mech.anchors.aucroc import QueryAttention
from icl_mech.anchors.compression import anchor_keep, encode_shared
from icl_mech.anchors.isolation import Isolate, IsolateLabelWords, isolation_mask
from icl_mech.anchors.reweighting import (
    AnchorReweighting,
    TrainedBeta,
    auxiliary_loss,
    label_word_loss,
)
from icl_mech.evaluation import build_prompts
from icl_mech.function_vectors.heads import CaptureHeads, PatchHeads
from icl_mech.icl_prompt import ICLPrompt
from icl_mech.icv import ICV, ICVSteering
from icl_mech.task_vectors.patching import AddToResidual, ReplaceResidual
from icl_mech.threads import torch_threads

TASK = tasks.load("sentiment")
RESID = "blocks.1.hook_resid_post"
HEADS = [(0, 1), (1, 2), (1, 0)]


@pytest.fixture(autouse=True)
def _one_thread():
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def model64():
    return tiny_model("llama").to(torch.float64)


@pytest.fixture(scope="module")
def model_bf16():
    return tiny_model("llama").to(torch.bfloat16)


def batch_for(model) -> PromptBatch:
    return PromptBatch.from_prompts(model, build_prompts(TASK, 1, TASK.examples[:3], seed=0))


def exact_in_every_dtype(*shape: int, seed: int = 0, scale: float = 1.0) -> Tensor:
    """Random float64 values that bfloat16 and float32 hold exactly."""
    drawn = torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * scale
    return drawn.bfloat16().double()


def icv_of(model, vector: Tensor) -> ICV:
    layers = tuple(range(model.cfg.n_layers))
    return ICV(vector, vector, vector, layers, model.cfg.model_name, len(layers), model.cfg.d_model)


# kind -> (value shape from the model's config, the item made from a value)
Kind = tuple[Callable, Callable]
KINDS: dict[str, Kind] = {
    "patch": (lambda c: (c.d_model,), lambda m, v: Patch(RESID, v, "last")),
    "add": (lambda c: (c.d_model,), lambda m, v: AddVector(RESID, v, "all", 0.5)),
    "ablate-mean": (lambda c: (c.d_model,), lambda m, v: Ablate(RESID, "target", "mean", v)),
    "task-vector": (lambda c: (3, c.d_model), lambda m, v: ReplaceResidual(v, layer=1)),
    "task-vector-add": (
        lambda c: (c.d_model,),
        lambda m, v: AddToResidual({0: v, 2: -v}, strength=2.0, positions="all"),
    ),
    "icv": (
        lambda c: (c.n_layers, c.d_model),
        lambda m, v: ICVSteering(icv_of(m, v), strength=0.5),
    ),
    "patch-heads": (lambda c: (len(HEADS), c.d_head), lambda m, v: PatchHeads(HEADS, v, "all")),
    "anchor-reweight": (
        lambda c: (c.n_layers, c.n_heads, 2),
        lambda m, v: AnchorReweighting(v),
    ),
}
# (model fixture, dtype the value is given in)
MODELS = [("tiny_llama", torch.float64), ("model64", torch.float32), ("model_bf16", torch.float32)]


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize(("model_name", "value_dtype"), MODELS)
def test_a_value_in_another_dtype_gives_the_result_of_the_models_dtype(
    request, kind, model_name, value_dtype
):
    model = request.getfixturevalue(model_name)
    shape_of, make_item = KINDS[kind]
    value = exact_in_every_dtype(*shape_of(model.cfg), scale=0.5)
    batch = batch_for(model)
    with torch.no_grad():
        own = run(model, batch, make_item(model, value.to(model.cfg.dtype)))
        other = run(model, batch, make_item(model, value.to(value_dtype)))
        untouched = run(model, batch)
    assert other.dtype == model.cfg.dtype
    torch.testing.assert_close(other, own)
    assert not torch.equal(own, untouched)  # the item did act


def test_a_float32_vector_applies_to_a_float64_and_a_bfloat16_model(model64, model_bf16):
    for model in (model64, model_bf16):
        value = exact_in_every_dtype(model.cfg.n_layers, model.cfg.d_model, seed=1)
        batch = batch_for(model)
        logits = {}
        for dtype in (torch.float32, model.cfg.dtype):
            with torch.no_grad(), icv_of(model, value.to(dtype)).apply(model, strength=0.3):
                logits[dtype] = model(batch.tokens, attention_mask=batch.attention_mask)
        assert logits[torch.float32].dtype == model.cfg.dtype
        torch.testing.assert_close(logits[torch.float32], logits[model.cfg.dtype])


@pytest.mark.parametrize("model_name", ["model64", "model_bf16"])
def test_a_float32_beta_reweights_a_model_of_another_dtype_against_a_cached_context(
    request, model_name
):
    model = request.getfixturevalue(model_name)
    demos, aux = TASK.examples[:2], TASK.examples[4:7]
    # large enough to move a bfloat16 loss (a power-of-two scale keeps the values exact)
    beta = exact_in_every_dtype(model.cfg.n_layers, model.cfg.n_heads, 2, seed=2, scale=4.0)

    def loss_with(values: Tensor) -> float:
        trained = TrainedBeta(values, model.cfg.model_name, TASK.name, TASK.classes)
        return auxiliary_loss(model, trained, TASK, demos, aux)

    plain = auxiliary_loss(model, None, TASK, demos, aux)
    own = loss_with(beta.to(model.cfg.dtype))
    # the float32 beta's exp() is taken in float32 before the cast to the model's dtype
    tolerance = {torch.float64: 1e-6, torch.bfloat16: 2e-2}[model.cfg.dtype]
    assert loss_with(beta.float()) == pytest.approx(own, rel=tolerance)
    assert own != pytest.approx(plain, rel=1e-3)


# --- device: hook functions on meta activations --------------------------------------------


class OneDevicePerCall(TorchFunctionMode):
    """Fail any torch call whose tensor arguments (0-d ones aside, which torch moves) live on
    more than one device."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        leaves, _ = tree_flatten((args, kwargs))
        devices = {str(t.device) for t in leaves if isinstance(t, Tensor) and t.ndim > 0}
        if len(devices) > 1:
            raise AssertionError(f"{func} mixes tensors of devices {sorted(devices)}")
        return func(*args, **kwargs)


def meta_activation(model, batch: PromptBatch, point: str, dtype: torch.dtype) -> Tensor:
    """An activation of the point's shape for the batch, on the meta device."""
    cfg, (n, seq) = model.cfg, batch.tokens.shape
    if point.endswith(("hook_pattern", "hook_attn_scores")):
        shape = (n, cfg.n_heads, seq, seq)
    elif point.endswith("hook_z"):
        shape = (n, seq, cfg.n_heads, cfg.d_head)
    else:
        shape = (n, seq, cfg.d_model)
    return torch.empty(shape, dtype=dtype, device="meta")


def run_hooks_on_meta(model, batch: PromptBatch, item, dtype=torch.float32) -> list[Tensor]:
    """Each hook of the item called on a meta activation; what each returned (or received)."""
    out = []
    for spec in item.specs(model, batch):
        activation = meta_activation(model, batch, spec.point, dtype)
        with OneDevicePerCall():
            returned = spec.fn(activation, SimpleNamespace(name=spec.point))
        out.append(activation if returned is None else returned)
    return out


def float64_cpu(*shape: int) -> Tensor:
    return torch.ones(shape, dtype=torch.float64)


def per_row_strengths() -> Tensor:
    return torch.tensor([[0.5], [0.0], [1.0]])  # one row without steering


INTERVENTIONS: dict[str, Callable] = {
    "patch": lambda m: Patch(RESID, float64_cpu(m.cfg.d_model), "last"),
    "patch-rows": lambda m: Patch(RESID, float64_cpu(3, m.cfg.d_model), "target"),
    "add": lambda m: AddVector(RESID, float64_cpu(m.cfg.d_model), "labels"),
    "ablate-zero": lambda m: Ablate(RESID, "last"),
    "ablate-batch-mean": lambda m: Ablate(RESID, "labels", "mean"),
    "ablate-given-mean": lambda m: Ablate(RESID, "last", "mean", float64_cpu(m.cfg.d_model)),
    "task-vector": lambda m: ReplaceResidual(float64_cpu(m.cfg.d_model), layer=2),
    "task-vector-add": lambda m: AddToResidual({0: float64_cpu(m.cfg.d_model)}),
    "icv": lambda m: ICVSteering(icv_of(m, float64_cpu(m.cfg.n_layers, m.cfg.d_model))),
    "icv-per-row": lambda m: ICVSteering(
        icv_of(m, float64_cpu(m.cfg.n_layers, m.cfg.d_model)), per_row_strengths()
    ),
    "patch-heads": lambda m: PatchHeads(HEADS, float64_cpu(len(HEADS), m.cfg.d_head)),
    "isolate": lambda m: Isolate([0, 2], "labels"),
    "isolate-label-words": lambda m: IsolateLabelWords([1]),
    "anchor-reweight": lambda m: AnchorReweighting(float64_cpu(m.cfg.n_layers, m.cfg.n_heads, 2)),
}


@pytest.mark.parametrize("kind", list(INTERVENTIONS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_interventions_follow_the_activations_device_and_dtype(tiny_llama, kind, dtype):
    batch = batch_for(tiny_llama)
    item = INTERVENTIONS[kind](tiny_llama)
    for activation in run_hooks_on_meta(tiny_llama, batch, item, dtype):
        assert activation.device.type == "meta"
        assert activation.dtype == dtype


@pytest.mark.parametrize("positions", ["all", "last", "target"])
def test_capture_keeps_the_activations_device_and_dtype(tiny_llama, positions):
    capture = Capture([RESID, "blocks.0.attn.hook_z"], positions)
    run_hooks_on_meta(tiny_llama, batch_for(tiny_llama), capture)
    assert {str(a.device) for a in capture.activations.values()} == {"meta"}
    assert {a.dtype for a in capture.activations.values()} == {torch.float32}


def test_head_and_query_probes_keep_the_activations_device(tiny_llama):
    batch = batch_for(tiny_llama)
    heads, attention = CaptureHeads(HEADS, "target"), QueryAttention([0, 2])
    run_hooks_on_meta(tiny_llama, batch, heads)
    run_hooks_on_meta(tiny_llama, batch, attention)
    assert heads.outputs.device.type == "meta"
    assert tuple(heads.outputs.shape) == (len(batch), len(HEADS), tiny_llama.cfg.d_head)
    assert {str(row.device) for row in attention.rows.values()} == {"meta"}


def test_anchor_columns_of_another_device_meet_the_pattern_there(tiny_llama):
    columns = torch.tensor([[-1, 0, 1, -1]], device="meta")
    pattern = torch.empty(2, tiny_llama.cfg.n_heads, 6, 6, device="meta")
    with OneDevicePerCall():
        fitted = AnchorReweighting._fit(columns, pattern, "blocks.0.attn.hook_pattern")
    assert fitted.device.type == "meta" and tuple(fitted.shape) == (2, 6)


def test_isolation_mask_is_built_on_the_rows_device():
    rows = torch.zeros(2, 5, dtype=torch.bool, device="meta")
    with OneDevicePerCall():
        mask = isolation_mask(rows)
    assert mask.device.type == "meta" and tuple(mask.shape) == (2, 1, 5, 5)


def test_selecting_cache_entries_keeps_the_keys_device(tiny_llama):
    demos = list(TASK.examples[:2])
    prompts = [ICLPrompt.build(TASK, demos, q) for q in TASK.examples[4:6]]
    cache, _, _ = encode_shared(tiny_llama, prompts)
    on_meta = replace(
        cache,
        keys=[k.to("meta") for k in cache.keys],
        values=[v.to("meta") for v in cache.values],
    )
    with OneDevicePerCall():
        kept = on_meta.select(anchor_keep(cache))
    assert {str(k.device) for k in kept.keys + kept.values} == {"meta"}
    assert kept.keys[0].shape[1] == int(anchor_keep(cache).sum())


def test_the_label_word_loss_is_computed_on_the_logits_device(tiny_llama):
    batch = batch_for(tiny_llama)
    logits = torch.empty(len(batch), tiny_llama.cfg.d_vocab, device="meta")
    with OneDevicePerCall():
        loss = label_word_loss(logits, batch.class_token_ids, batch.gold)
    assert loss.device.type == "meta" and loss.ndim == 0
