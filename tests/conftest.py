import os
from pathlib import Path

import pytest
import torch

import icl_mech
from icl_mech import load_model, tiny_model

CHECKOUT = Path(__file__).resolve().parents[1]

# the 4.x suite (scripts/tl4-test) tests the installed wheel, never the checkout's sources
if (
    os.environ.get("ICL_MECH_EXPECT_WHEEL")
    and Path(icl_mech.__file__).parent == CHECKOUT / "icl_mech"
):
    pytest.exit(f"icl_mech was imported from the checkout ({icl_mech.__file__}), not the wheel", 2)


@pytest.fixture(scope="session")
def embedded():
    """The embedded SmolLM2-135M-Instruct (built into the cache on first use)."""
    torch.manual_seed(0)
    return load_model()


@pytest.fixture(scope="session", params=["gpt2", "llama"])
def tiny(request):
    """A tiny random model of each architecture."""
    return tiny_model(request.param)


@pytest.fixture(scope="session")
def tiny_llama():
    return tiny_model("llama")


@pytest.fixture(scope="session")
def tiny_gpt2():
    return tiny_model("gpt2")


# --- no test writes into the checkout (runs/ and figures/ included) ----------------------------

NOT_THE_CHECKOUT = {".git", ".venv", ".venv-tl4", "__pycache__", ".pytest_cache", ".ruff_cache",
                    ".ipynb_checkpoints", ".hypothesis", "build"}  # fmt: skip


def checkout_state(root: Path = CHECKOUT) -> dict[str, tuple[int, int]]:
    """(modification time, size) of every file of the checkout, ignored ones (runs/) included;
    environments, caches and git's own files left out."""
    state = {}
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = [
            d for d in subfolders if d not in NOT_THE_CHECKOUT and not d.endswith(".egg-info")
        ]
        for name in files:
            path = os.path.join(folder, name)
            info = os.stat(path)
            state[os.path.relpath(path, root)] = (info.st_mtime_ns, info.st_size)
    return state


def changed_files(before: dict, after: dict) -> list[str]:
    return sorted(p for p in before.keys() | after.keys() if before.get(p) != after.get(p))


@pytest.fixture(scope="module", autouse=True)
def the_checkout_is_left_untouched(request):
    """Every test module leaves the checkout as it found it: tests write into tmp_path."""
    before = checkout_state()
    yield
    changed = changed_files(before, checkout_state())
    assert not changed, f"{request.module.__name__} wrote into the checkout: {changed[:10]}"
