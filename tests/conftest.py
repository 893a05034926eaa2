import pytest
import torch

from icl_mech import load_model, tiny_model


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
