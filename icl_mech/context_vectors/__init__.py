"""Context vectors that learn: I2CL (Li et al. 2025: per-layer attention and MLP context
vectors injected at every query position with calibrated coefficients) and ICL state vectors
(Li et al. 2024: the state after each demonstration, inner and momentum optimisation,
divide-and-conquer aggregation)."""

from icl_mech.context_vectors.aggregation import PatchStates, divide_and_conquer
from icl_mech.context_vectors.calibrate import calibrate
from icl_mech.context_vectors.extract import context_vectors, demonstration_text, per_class
from icl_mech.context_vectors.i2cl import ContextVectors
from icl_mech.context_vectors.injection import InjectContext
from icl_mech.context_vectors.states import CaptureStates, StateVectors, extract_states

__all__ = [
    "CaptureStates",
    "ContextVectors",
    "InjectContext",
    "PatchStates",
    "StateVectors",
    "calibrate",
    "context_vectors",
    "demonstration_text",
    "divide_and_conquer",
    "extract_states",
    "per_class",
]
