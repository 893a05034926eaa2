import pytest
import torch

from icl_mech import IclMechError, hooked_loading, models, tiny_model
from icl_mech.backends import is_bridge
from icl_mech.cache_keys import HASH_INDEX, keyed_folder


@pytest.mark.embedded
def test_embedded_logits_equal_transformers_model(embedded):
    from transformers import AutoModelForCausalLM

    hf_model = AutoModelForCausalLM.from_pretrained(str(models.embedded_folder()))
    tokens = embedded.tokenizer("Review: a warm, funny film\nSentiment:", return_tensors="pt")
    with torch.no_grad():
        ours = embedded(tokens.input_ids)
        theirs = hf_model(tokens.input_ids).logits
    assert (ours - theirs).abs().max().item() <= 1e-4


@pytest.mark.embedded
def test_weights_loaded_in_one_call_and_laid_out_change_no_number(embedded, monkeypatch):
    """The "before" is TransformerLens's own: weights loaded key by key by
    ``load_and_process_state_dict`` (every processing step off), in TransformerLens's layout."""
    if is_bridge(embedded):
        pytest.skip("linear_layout lays out HookedTransformer weights; the bridge keeps its own")
    own_loads = []

    def own_loading(model, state_dict):
        own_loads.append(1)
        off = dict(fold_ln=False, center_writing_weights=False, center_unembed=False)
        model.load_and_process_state_dict(state_dict, fold_value_biases=False, **off)

    monkeypatch.setattr(hooked_loading, "load_weights", own_loading)
    stored = models.load_model(linear_layout=False)
    assert own_loads == [1]
    assert all(p.is_contiguous() for p in stored.parameters())
    relaid = {n for n, p in embedded.named_parameters() if not p.is_contiguous()}
    assert {"unembed.W_U", "blocks.0.mlp.W_in", "blocks.0.attn.W_Q"} <= relaid
    for (name, ours), (_, theirs) in zip(embedded.named_parameters(), stored.named_parameters()):
        assert torch.equal(ours, theirs), name
    tokens = embedded.tokenizer("Review: a warm, funny film\nSentiment:", return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(embedded(tokens.input_ids), stored(tokens.input_ids))


@pytest.mark.parametrize("n_devices", [0, 2, 1.5, "2"])
def test_n_devices_beyond_the_machine_is_refused_before_loading(n_devices, monkeypatch):
    monkeypatch.setattr(models, "embedded_folder", lambda: pytest.fail("loaded a model"))
    with pytest.raises(IclMechError, match="n_devices"):
        models.load_model(n_devices=n_devices)


@pytest.mark.embedded
def test_embedded_config(embedded):
    cfg = embedded.cfg
    assert (cfg.n_layers, cfg.n_heads, cfg.n_key_value_heads, cfg.d_model) == (30, 9, 3, 576)
    assert cfg.default_prepend_bos is False


def test_interrupted_conversion_leaves_nothing_and_half_cache_is_rebuilt(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("ICL_MECH_CACHE", str(cache))
    (tmp_path / "fake.gguf").write_bytes(b"GGUF fake")  # the cache key hashes it
    monkeypatch.setattr(models, "embedded_gguf", lambda: tmp_path / "fake.gguf")

    def interrupted(gguf, out):
        out.mkdir(parents=True)
        (out / "model.safetensors").write_text("half")
        raise KeyboardInterrupt

    monkeypatch.setattr(models, "_dequantise", interrupted)
    with pytest.raises(KeyboardInterrupt):
        models.embedded_folder()
    assert [p.name for p in cache.iterdir()] == [HASH_INDEX]  # the source hash, memoised

    half = keyed_folder(models.EMBEDDED_NAME, models.embedded_key())
    half.mkdir()
    (half / "config.json").write_text("{}")  # an older run died before the marker
    written = []

    def complete(gguf, out):
        out.mkdir(parents=True)
        (out / "config.json").write_text('{"ok": true}')
        written.append(out)

    monkeypatch.setattr(models, "_dequantise", complete)
    folder = models.embedded_folder()
    assert folder == half and (folder / "config.json").read_text() == '{"ok": true}'
    assert len(written) == 1
    models.embedded_folder()
    assert len(written) == 1  # a complete cache is reused


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_tiny_model_architectures(arch):
    model = tiny_model(arch)
    cfg = model.cfg
    if arch == "gpt2":
        assert (cfg.normalization_type, cfg.positional_embedding_type) == ("LN", "standard")
    else:
        assert (cfg.normalization_type, cfg.positional_embedding_type) == ("RMS", "rotary")
        assert cfg.n_key_value_heads < cfg.n_heads
    logits = model(model.tokenizer("Review: fine\nSentiment:", return_tensors="pt").input_ids)
    assert logits.shape[-1] == cfg.d_vocab and torch.isfinite(logits).all()


def test_unknown_tiny_arch():
    with pytest.raises(IclMechError, match="unknown arch"):
        tiny_model("mamba")
