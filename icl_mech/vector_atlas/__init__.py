"""The vector atlas: every way to put a task into a vector (task vector, mean difference,
function vector, ICL state vectors, ICV, I2CL) on the same tasks, splits and queries, with
accuracy and intervals, cost, geometry and logit lens."""

from icl_mech.vector_atlas.evaluate import evaluate, evaluate_task
from icl_mech.vector_atlas.results import AtlasResults, AtlasTask
from icl_mech.vector_atlas.settings import Settings

__all__ = ["AtlasResults", "AtlasTask", "Settings", "evaluate", "evaluate_task"]
