"""icl_mech: mechanistic interpretability of in-context learning on TransformerLens hooks.

Every catalogued kind (``kinds()``, ``make()``) is available from this package alone: the
method packages are imported on first use of the catalogue.
"""

import warnings

# tqdm's notebook bar needs ipywidgets; without them the libraries we import warn once per
# kernel (with an absolute path). Our own bars are plain text, so the warning says nothing.
warnings.filterwarnings("ignore", message="IProgress not found")


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
from icl_mech.validate import IclMechWarning

__version__ = "0.1.0"

__all__ = [
    "Ablate",
    "AddVector",
    "Capture",
    "Demonstration",
    "HookSpec",
    "ICLPrompt",
    "IclMechError",
    "IclMechWarning",
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
