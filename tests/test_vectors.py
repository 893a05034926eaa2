"""The vector protocol (save/load/apply/check_fits) and the one batcher and activation reader."""

import json
import random
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file

from icl_mech import IclMechError, PromptBatch, run, tasks, tiny_model
from icl_mech.activations import read_activations, stop_layer
from icl_mech.anchors.reweighting import TrainedBeta
from icl_mech.batching import TextBatch, batched
from icl_mech.hooks import points
from icl_mech.icl_prompt import ICLPrompt
from icl_mech.icv import ICV, extract_icv
from icl_mech.padding import pad_token_id
from icl_mech.task_vectors import TaskVector, draw_dummies, extract, mean_difference
from icl_mech.threads import torch_threads
from icl_mech.vector_files import HEADER_KEY

PAIRS = tasks.load_pairs("negative_positive")[:5]
ANTONYM = tasks.load("antonym").with_examples(tasks.load("antonym").examples[:40])
SENTIMENT = tasks.load("sentiment")
KINDS = ("theta", "mean-difference", "icv", "trained-beta")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    with torch_threads(1):
        yield


def _sets(n_sets=3):
    rng = random.Random(0)
    return [ANTONYM.sample_demonstrations(2 + i % 2, rng) for i in range(n_sets)]


def _beta(model):
    generator = torch.Generator().manual_seed(0)
    shape = (model.cfg.n_layers, model.cfg.n_heads, len(SENTIMENT.classes))
    beta = torch.randn(shape, generator=generator)
    name, d_model = model.cfg.model_name, model.cfg.d_model
    return TrainedBeta(beta, name, SENTIMENT.name, SENTIMENT.classes, seed=3, d_model=d_model)


@pytest.fixture(scope="module")
def vectors(tiny_llama):
    sets = _sets()
    dummies = draw_dummies(ANTONYM, sets, 2, seed=0)
    theta = extract(tiny_llama, ANTONYM, sets, dummies, seed=7)
    return {
        "theta": theta,
        "mean-difference": mean_difference(tiny_llama, theta, ANTONYM, dummies),
        "icv": extract_icv(tiny_llama, PAIRS),
        "trained-beta": _beta(tiny_llama),
    }


def _use(kind, model):
    """(apply arguments, a batch to run) for one kind of vector."""
    if kind == "trained-beta":
        demos = [SENTIMENT.examples[0], SENTIMENT.examples[1]]
        queries = SENTIMENT.examples[4:7]
        prompts = [ICLPrompt.build(SENTIMENT, demos, q) for q in queries]
        return {"batch": PromptBatch.from_prompts(model, prompts)}, {}
    prompts = [ICLPrompt.zero_shot(ANTONYM, q) for q in ANTONYM.examples[30:33]]
    batch = PromptBatch.from_prompts(model, prompts)  # one row per demonstration set of θ
    how = {"theta": {"layer": 1}, "mean-difference": {"layer": 1}, "icv": {"strength": 0.2}}
    return {"batch": batch}, how[kind]


def _logits(vector, model, kind, **options):
    given, how = _use(kind, model)
    batch = given["batch"]
    with torch.no_grad(), vector.apply(model, batch=batch, **how, **options) as hooked:
        return hooked(batch.tokens, attention_mask=batch.attention_mask)


# --- one protocol: round trips ------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_round_trip_gives_identical_tensors_and_effect(kind, vectors, tiny_llama, tmp_path):
    vector = vectors[kind]
    path = vector.save(tmp_path / kind)
    assert path.suffix == ".safetensors" and path.with_suffix(".json").is_file()
    loaded = type(vector).load(path, model=tiny_llama)
    assert loaded.kind == kind and loaded.tensors().keys() == vector.tensors().keys()
    for name, tensor in vector.tensors().items():
        assert torch.equal(loaded.tensors()[name], tensor), name
    assert loaded.record() == vector.record()
    info = json.loads(path.with_suffix(".json").read_text())
    assert info["kind"] == kind and info["model"] == tiny_llama.cfg.model_name
    assert {"d_model", "n_layers", "hook_points", "layers", "positions", "seed"} <= set(info)
    assert info["icl_mech_version"] == __import__("icl_mech").__version__
    effect = _logits(vector, tiny_llama, kind)
    assert torch.equal(_logits(loaded, tiny_llama, kind), effect)
    batch = _use(kind, tiny_llama)[0]["batch"]
    with torch.no_grad():
        assert not torch.allclose(run(tiny_llama, batch), effect)


def test_beta_records_its_head_count(vectors):
    assert vectors["trained-beta"].record()["n_heads"] == 4


# --- one protocol: refusals ---------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_another_width_or_depth_is_refused_naming_both_models(kind, vectors, tmp_path):
    vector = vectors[kind]
    path = vector.save(tmp_path / kind)
    wide = tiny_model("llama", d_model=32, n_heads=4)
    with pytest.raises(IclMechError, match=r"tiny-llama-3L.*width 64 \(d_model=64\).*d_model 32"):
        type(vector).load(path, model=wide)
    deep = tiny_model("llama", n_layers=4)
    with pytest.raises(IclMechError, match=r"tiny-llama-3L.*depth 3.*tiny-llama-4L.*n_layers 4"):
        type(vector).load(path, model=deep)
    with pytest.raises(IclMechError, match="depth 3"):
        with vector.apply(deep, **_use(kind, deep)[1]):
            pass


def test_another_head_count_is_refused_for_beta(vectors, tmp_path):
    path = vectors["trained-beta"].save(tmp_path / "beta")
    with pytest.raises(IclMechError, match=r"head count 4 \(n_heads=4\).*n_heads 8"):
        TrainedBeta.load(path, model=tiny_model("llama", n_heads=8))


@pytest.mark.parametrize("kind", KINDS)
def test_another_model_name_is_an_error_unless_not_strict(kind, vectors, tiny_gpt2, tmp_path):
    vector = vectors[kind]
    path = vector.save(tmp_path / kind)
    with pytest.raises(IclMechError, match="'tiny-llama-3L'.*'tiny-gpt2-3L'.*strict=False"):
        type(vector).load(path, model=tiny_gpt2)
    with pytest.warns(UserWarning, match="tiny-gpt2-3L"):
        loaded = type(vector).load(path, model=tiny_gpt2, strict=False)
    with pytest.raises(IclMechError, match="strict=False"):
        _logits(loaded, tiny_gpt2, kind)
    with pytest.warns(UserWarning, match="tiny-gpt2-3L"):
        _logits(loaded, tiny_gpt2, kind, strict=False)


def test_corrupt_json_sidecar_is_refused_naming_it(vectors, tmp_path):
    path = vectors["icv"].save(tmp_path / "icv")
    sidecar = path.with_suffix(".json")
    sidecar.write_text(sidecar.read_text()[:-20])
    with pytest.raises(IclMechError, match=r"icv\.json.*not valid JSON"):
        ICV.load(path)


def test_edited_json_sidecar_is_refused_naming_it(vectors, tmp_path):
    path = vectors["theta"].save(tmp_path / "theta")
    sidecar = path.with_suffix(".json")
    info = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps({**info, "seed": 8, "layers": [0, 1]}))
    with pytest.raises(IclMechError, match=r"theta\.json.*disagrees.*\['layers', 'seed'\]"):
        TaskVector.load(path)


@pytest.mark.parametrize("keep", [0.5, -12])
def test_truncated_safetensors_is_refused_naming_it(vectors, tmp_path, keep):
    path = vectors["theta"].save(tmp_path / "theta")
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)] if keep > 0 else data[:keep])
    with pytest.raises(IclMechError, match=r"theta\.safetensors.*truncated or corrupt"):
        TaskVector.load(path)


@pytest.mark.parametrize(
    ("kind", "reader", "owner"),
    [
        ("icv", TaskVector, "ICV"),
        ("theta", ICV, "TaskVector"),
        ("trained-beta", ICV, "TrainedBeta"),
    ],
)
def test_a_file_of_another_kind_is_refused(kind, reader, owner, vectors, tmp_path):
    path = vectors[kind].save(tmp_path / "saved")
    with pytest.raises(IclMechError, match=rf"saved\.safetensors.*'{kind}'.*{owner}\.load"):
        reader.load(path)


def test_missing_file_tensor_or_key_is_refused_naming_the_file(vectors, tmp_path):
    with pytest.raises(IclMechError, match=r"nowhere\.safetensors.*does not exist"):
        ICV.load(tmp_path / "nowhere")
    icv = vectors["icv"]
    header = json.dumps(icv.record())
    tensors = {"vector": icv.vector, "mean": icv.mean}
    save_file(tensors, str(tmp_path / "partial.safetensors"), metadata={HEADER_KEY: header})
    with pytest.raises(IclMechError, match=r"partial\.safetensors.*missing: \['component'\]"):
        ICV.load(tmp_path / "partial")
    info = {k: v for k, v in icv.record().items() if k != "prefixes"}
    tensors = {name: t.contiguous() for name, t in icv.tensors().items()}
    meta = {HEADER_KEY: json.dumps(info)}
    save_file(tensors, str(tmp_path / "keyless.safetensors"), metadata=meta)
    with pytest.raises(IclMechError, match=r"keyless\.safetensors.*lacks the key 'prefixes'"):
        ICV.load(tmp_path / "keyless")
    save_file({"x": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(IclMechError, match=r"plain\.safetensors.*no icl_mech provenance"):
        TrainedBeta.load(tmp_path / "plain")


@pytest.mark.parametrize("kind", KINDS)
def test_missing_sidecar_is_recovered_from_the_header(kind, vectors, tiny_llama, tmp_path):
    vector = vectors[kind]
    path = vector.save(tmp_path / kind)
    path.with_suffix(".json").unlink()
    loaded = type(vector).load(path, model=tiny_llama)
    assert loaded.record() == vector.record()
    for name, tensor in vector.tensors().items():
        assert torch.equal(loaded.tensors()[name], tensor)


# --- degenerate vectors -------------------------------------------------------------------


def _strict_json(text):
    def refuse(token):
        raise ValueError(f"non-standard JSON token {token}")

    return json.loads(text, parse_constant=refuse)


def test_nan_explained_variance_is_written_as_valid_json(tiny_llama, tmp_path):
    with pytest.warns(UserWarning, match="no spread"):
        icv = extract_icv(tiny_llama, PAIRS[:1])
    assert icv.explained_variance != icv.explained_variance
    path = icv.save(tmp_path / "one")
    assert _strict_json(path.with_suffix(".json").read_text())["explained_variance"] is None
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        assert _strict_json(handle.metadata()[HEADER_KEY])["explained_variance"] is None
    loaded = ICV.load(path)
    assert loaded.explained_variance != loaded.explained_variance


def test_identical_pairs_are_refused(tiny_llama):
    with pytest.raises(IclMechError, match="identical states"):
        extract_icv(tiny_llama, [(x, x) for x, _ in PAIRS[:3]])


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_values_are_refused(bad, vectors, tiny_llama):
    theta = vectors["theta"]
    values = theta.values.clone()
    values[0, 1, 2] = bad
    with pytest.raises(IclMechError, match="NaN or inf"):
        TaskVector(values, theta.layers, dict(theta.provenance))
    icv = vectors["icv"]
    mean = icv.mean.clone()
    mean[2, 5] = bad
    with pytest.raises(IclMechError, match="ICV.mean holds 1 NaN or inf"):
        ICV(icv.vector, mean, icv.component, icv.layers, "m", 3, 64)
    mutated = TaskVector(theta.values.clone(), theta.layers, dict(theta.provenance))
    mutated.values[0, 0, 0] = bad
    with pytest.raises(IclMechError, match="NaN or inf"):
        mutated.intervention(layer=1)
    beta = _beta(tiny_llama)
    beta.beta[0, 0, 0] = bad
    with pytest.raises(IclMechError, match="TrainedBeta.beta"):
        beta.intervention()


# --- one batcher, one pad rule, one activation reader -------------------------------------


def test_pad_rule_pad_then_eos_then_zero():
    assert pad_token_id(SimpleNamespace(pad_token_id=3, eos_token_id=5)) == 3
    assert pad_token_id(SimpleNamespace(pad_token_id=None, eos_token_id=5)) == 5
    assert pad_token_id(SimpleNamespace(pad_token_id=None, eos_token_id=None)) == 0


class _NoPadTokenizer:
    """The tiny tokenizer without a pad token, EOS 7."""

    pad_token_id, eos_token_id = None, 7

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)

    def __call__(self, *args, **kwargs):
        return self._tokenizer(*args, **kwargs)

    def __len__(self):
        return len(self._tokenizer)


def test_prompts_and_texts_pad_alike_without_a_pad_token(tiny_llama):
    model = SimpleNamespace(tokenizer=_NoPadTokenizer(tiny_llama.tokenizer), cfg=tiny_llama.cfg)
    prompts = [ICLPrompt.zero_shot(ANTONYM, q) for q in ANTONYM.examples[30:34]]
    for batch in (
        PromptBatch.from_prompts(model, prompts),
        TextBatch.from_texts(model, [p.text for p in prompts]),
    ):
        padding = batch.attention_mask == 0
        assert padding.any() and bool((batch.tokens[padding] == 7).all())


def _prompts():
    sets = _sets(4)
    return [ICLPrompt.build(ANTONYM, s, q) for s in sets for q in ANTONYM.examples[30:32]]


def test_batcher_yields_every_index_once_sorted_by_length(tiny_llama):
    prompts = _prompts()
    lengths = [len(PromptBatch.from_prompts(tiny_llama, [p]).tokens[0]) for p in prompts]
    groups = list(batched(tiny_llama, prompts, 3, sort=True))
    order = [i for index, _ in groups for i in index]
    assert sorted(order) == list(range(len(prompts))) and order != sorted(order)
    assert [lengths[i] for i in order] == sorted(lengths)
    for index, batch in groups:
        assert [p.text for p in batch.prompts] == [prompts[i].text for i in index]
    in_order = [i for index, _ in batched(tiny_llama, prompts, 3) for i in index]
    assert in_order == list(range(len(prompts)))
    with pytest.raises(IclMechError, match="item 1 is a str"):
        list(batched(tiny_llama, [prompts[0], "a text"], 2))


@pytest.mark.parametrize("texts", [False, True])
def test_reader_batched_equals_one_at_a_time_in_input_order(tiny, texts):
    inputs = _prompts()
    inputs = [p.text for p in inputs] if texts else inputs
    names = points(tiny, "hook_resid_post", [0, 2]) + ["blocks.1.hook_mlp_out"]
    together = read_activations(tiny, inputs, names, batch_size=3, sort=True)
    assert together.shape == (len(inputs), 3, tiny.cfg.d_model)
    for i, item in enumerate(inputs):
        alone = read_activations(tiny, [item], names)
        torch.testing.assert_close(together[i], alone[0], atol=1e-5, rtol=1e-5)
    full = read_activations(tiny, inputs, names, batch_size=3, sort=False, stop_early=False)
    torch.testing.assert_close(together, full, atol=1e-5, rtol=1e-5)


def test_reader_stops_after_the_deepest_block_and_checks_positions(tiny_llama):
    assert stop_layer(["blocks.1.hook_resid_post", "blocks.0.attn.hook_z"]) == 2
    assert stop_layer(["hook_embed"]) == 0
    assert stop_layer(["blocks.0.hook_resid_post", "ln_final.hook_normalized"]) is None
    with pytest.raises(IclMechError, match="one position per input"):
        read_activations(tiny_llama, ["a text"], "blocks.0.hook_resid_post", positions="all")
    with pytest.raises(IclMechError, match="count from the end"):
        read_activations(tiny_llama, ["a text"], "blocks.0.hook_resid_post", positions=2)
    with pytest.raises(IclMechError, match="unknown hook point"):
        read_activations(tiny_llama, ["a text"], "blocks.0.hook_nope")
