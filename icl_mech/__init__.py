"""icl_mech: mechanistic interpretability of in-context learning on TransformerLens hooks."""

from icl_mech.errors import IclMechError
from icl_mech.hooks import (
    Ablate,
    AddVector,
    Capture,
    HookSpec,
    Intervention,
    Patch,
    Probe,
    attach,
    kinds,
    make,
    register,
    run,
)
from icl_mech.models import load_model, tiny_model
from icl_mech.prompts import Demonstration, ICLPrompt, PromptBatch, Task

__version__ = "0.1.0"

__all__ = [
    "Ablate",
    "AddVector",
    "Capture",
    "Demonstration",
    "HookSpec",
    "ICLPrompt",
    "IclMechError",
    "Intervention",
    "Patch",
    "Probe",
    "PromptBatch",
    "Task",
    "attach",
    "kinds",
    "load_model",
    "make",
    "register",
    "run",
    "tiny_model",
]
