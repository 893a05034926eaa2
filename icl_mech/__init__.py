"""icl_mech: mechanistic interpretability of in-context learning on TransformerLens hooks.

The top of the package: it imports :mod:`icl_mech.catalogue`, so every built-in kind
(``kinds()``, ``make()``) and every notebook card is registered once ``icl_mech`` is imported.
"""

import warnings

# tqdm's notebook bar needs ipywidgets; without them the libraries we import warn once per
# kernel (with an absolute path). Our own bars are plain text, so the warning says nothing.
warnings.filterwarnings("ignore", message="IProgress not found")


from icl_mech.catalogue import kinds, make
from icl_mech.errors import IclMechError
from icl_mech.hooks import HookSpec, Intervention, Probe, attach, register, run
from icl_mech.icl_prompt import ICLPrompt
from icl_mech.interventions import Ablate, AddVector, Capture, Patch
from icl_mech.models import load_model, tiny_model
from icl_mech.prompt_batch import PromptBatch
from icl_mech.prompts import Demonstration, Task
from icl_mech.validate import IclMechWarning
from icl_mech.version import __version__

__all__ = [
    "__version__",
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
