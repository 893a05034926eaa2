"""The model cache under concurrency, corruption and read-only folders (findings 1, 2, 3).

Conversions here are fakes (a few bytes of safetensors) or the tiny tokenizer, going through
the same code path as the embedded model's GGUF conversion.
"""

import contextlib
import hashlib
import json
import multiprocessing
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from icl_mech import IclMechError, models, tiny_model
from icl_mech.cache_keys import keyed_folder
from icl_mech.tiny_tokenizer import TINY_TOKENIZER, _train_tiny_tokenizer, tokenizer_key

UNWRITABLE = "/proc/icl-mech-cache"  # /proc refuses new entries, even to root


def _fake_conversion(calls: Path, delay: float = 0.3):
    """A small conversion recording each call as a file (visible across processes)."""

    def convert(gguf, out):
        calls.mkdir(exist_ok=True)
        (calls / f"{os.getpid()}-{time.time_ns()}").touch()
        out.mkdir(parents=True)
        save_file({"weight": torch.arange(64, dtype=torch.float32)}, str(out / "model.safetensors"))
        (out / "config.json").write_text('{"fake": true}')
        time.sleep(delay)

    return convert


@pytest.fixture
def fake_cache(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    calls = tmp_path / "calls"
    monkeypatch.setenv("ICL_MECH_CACHE", str(cache))
    gguf = _fake_gguf(tmp_path)
    monkeypatch.setattr(models, "embedded_gguf", lambda: gguf)
    monkeypatch.setattr(models, "_dequantise", _fake_conversion(calls))
    return cache, calls


def _fake_gguf(folder: Path) -> Path:
    """A stand-in source file (the cache key hashes it)."""
    path = folder / "fake.gguf"
    path.write_bytes(b"GGUF fake")
    return path


def _embedded_folder() -> Path:
    """Where embedded_folder() builds under the current key."""
    return keyed_folder(models.EMBEDDED_NAME, models.embedded_key())


@pytest.fixture
def fresh_tokenizer():
    models.tiny_tokenizer.cache_clear()
    yield
    models.tiny_tokenizer.cache_clear()


def _n_calls(calls: Path) -> int:
    return len(list(calls.iterdir())) if calls.exists() else 0


def _digest(folder: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.iterdir())
        if p.is_file()
    }


def _visible(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir() if not p.name.startswith("."))


def _in_processes(target, n: int, workdir: Path) -> list[dict]:
    """Run ``target()`` in ``n`` forked processes released together; their results or errors."""
    workdir.mkdir(exist_ok=True)

    def child(index: int) -> None:
        (workdir / f"ready-{index}").touch()
        deadline = time.time() + 20
        while len(list(workdir.glob("ready-*"))) < n and time.time() < deadline:
            time.sleep(0.005)
        try:
            result = {"ok": True, "value": str(target())}
        except BaseException as error:  # noqa: BLE001 - reported to the parent
            result = {"ok": False, "value": repr(error)}
        (workdir / f"result-{index}.json").write_text(json.dumps(result))

    context = multiprocessing.get_context("fork")
    processes = [context.Process(target=child, args=(i,)) for i in range(n)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
    return [json.loads((workdir / f"result-{i}.json").read_text()) for i in range(n)]


# finding 1: concurrent first use


def test_two_processes_convert_into_one_empty_cache(fake_cache, tmp_path):
    cache, calls = fake_cache
    results = _in_processes(models.embedded_folder, 2, tmp_path / "sync")
    assert [r["ok"] for r in results] == [True, True], results
    assert {r["value"] for r in results} == {str(_embedded_folder())}
    assert _visible(cache) == [_embedded_folder().name]
    assert _n_calls(calls) == 1  # the lock kept the second process from converting again
    with safe_open(str(_embedded_folder() / "model.safetensors"), "pt") as f:
        assert f.get_tensor("weight").shape == (64,)


def test_threads_convert_into_one_empty_cache(fake_cache):
    cache, calls = fake_cache
    with ThreadPoolExecutor(4) as pool:
        folders = list(pool.map(lambda _: models.embedded_folder(), range(4)))
    assert set(folders) == {_embedded_folder()}
    assert _visible(cache) == [_embedded_folder().name]
    assert _n_calls(calls) == 1


def test_tiny_models_in_threads_share_one_tokenizer_build(tmp_path, monkeypatch, fresh_tokenizer):
    monkeypatch.setenv("ICL_MECH_CACHE", str(tmp_path))
    small = dict(n_layers=1, d_model=16, n_heads=2)
    with ThreadPoolExecutor(4) as pool:
        built = list(pool.map(lambda _: tiny_model("gpt2", **small), range(4)))
    expected = keyed_folder(TINY_TOKENIZER, tokenizer_key()).name
    assert len(built) == 4 and _visible(tmp_path) == [expected]


def test_two_processes_build_the_tiny_tokenizer(tmp_path, monkeypatch, fresh_tokenizer):
    cache = tmp_path / "cache"
    monkeypatch.setenv("ICL_MECH_CACHE", str(cache))

    def build():
        models.tiny_tokenizer.cache_clear()
        return models.tiny_tokenizer().name_or_path

    results = _in_processes(build, 2, tmp_path / "sync")
    assert [r["ok"] for r in results] == [True, True], results
    (folder,) = _visible(cache)
    assert {r["value"] for r in results} == {str(cache / folder)}
    retrained = tmp_path / "again"
    _train_tiny_tokenizer().save_pretrained(retrained)
    kept = _digest(cache / folder)
    for name, digest in _digest(retrained).items():
        assert kept[name] == digest  # the files are the deterministic build's, whole


def test_a_finished_rival_folder_is_accepted(tmp_path, monkeypatch):
    # a rival that took no lock (a file system without locks) completes while we convert
    monkeypatch.setattr(models.cache, "folder_lock", lambda folder: contextlib.nullcontext())
    folder = tmp_path / "thing"

    def rival(out):
        out.mkdir()
        (out / "a.txt").write_text("rival")

    def ours(out):
        models.cache.build_once(folder, rival, what="a rival")
        out.mkdir()
        (out / "a.txt").write_text("ours")

    assert models.cache.build_once(folder, ours, what="ours") == folder
    assert (folder / "a.txt").read_text() == "rival"
    assert _visible(tmp_path) == ["thing"]


# finding 2: a corrupt cache repairs itself


def test_truncated_weights_are_rebuilt_with_a_warning(fake_cache):
    cache, calls = fake_cache
    folder = models.embedded_folder()
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # the completion marker stays
    with pytest.warns(UserWarning, match="(?s)corrupt.*model.safetensors.*rebuild"):
        assert models.embedded_folder() == folder
    assert _n_calls(calls) == 2
    with safe_open(str(weights), "pt") as f:
        assert f.get_tensor("weight").shape == (64,)
    models.embedded_folder()
    assert _n_calls(calls) == 2  # repaired once, then reused


def test_truncated_tiny_tokenizer_is_rebuilt(tmp_path, monkeypatch, fresh_tokenizer):
    monkeypatch.setenv("ICL_MECH_CACHE", str(tmp_path))
    folder = Path(models.tiny_tokenizer().name_or_path)
    vocab = folder / "tokenizer.json"
    vocab.write_text(vocab.read_text()[:1000])
    models.tiny_tokenizer.cache_clear()
    with pytest.warns(UserWarning, match="corrupt"):
        tokenizer = models.tiny_tokenizer()
    assert tokenizer.decode(tokenizer.encode("Review: a fine film")) == "Review: a fine film"


def test_a_complete_folder_of_an_older_version_is_reused(fake_cache):
    cache, calls = fake_cache
    folder = models.embedded_folder()
    (folder / models.cache.MARKER).write_text(json.dumps({"source": "fake.gguf"}))
    assert models.embedded_folder() == folder
    assert _n_calls(calls) == 1


# finding 3: an unwritable cache


def test_unwritable_cache_fails_before_converting(monkeypatch, tmp_path):
    calls = tmp_path / "calls"
    monkeypatch.setenv("ICL_MECH_CACHE", UNWRITABLE)
    gguf = _fake_gguf(tmp_path)
    monkeypatch.setattr(models, "embedded_gguf", lambda: gguf)
    monkeypatch.setattr(models, "_dequantise", _fake_conversion(calls))
    with pytest.raises(IclMechError, match=f"(?s){UNWRITABLE}.*ICL_MECH_CACHE"):
        models.embedded_folder()
    assert _n_calls(calls) == 0


def test_tiny_model_works_with_a_read_only_cache(monkeypatch, fresh_tokenizer):
    monkeypatch.setenv("ICL_MECH_CACHE", UNWRITABLE)
    with pytest.warns(UserWarning, match="not writable"):
        model = tiny_model("gpt2", n_layers=1, d_model=16, n_heads=2)
    tokens = model.tokenizer("Review: fine", return_tensors="pt").input_ids
    assert torch.isfinite(model(tokens)).all()
