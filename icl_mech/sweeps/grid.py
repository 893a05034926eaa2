"""A sweep's grid: method × models × tasks × seeds with settings overrides, checked before any
model work, and the cells it expands to, each keyed by the sha256 of its canonical JSON config.

A grid is a TOML file or a dict::

    method = "task-vectors"          # a reproduction (icl_mech.runner.REPRODUCTIONS)
    models = ["tiny-gpt2", "embedded"]
    tasks = ["country_capital", "antonym"]
    seeds = [0, 1, 2]                # optional, default [0]
    quick = false                    # start from the quick settings (default: full)
    load = {device = "cuda", dtype = "bfloat16"}   # optional: load_model's options
    table = "headline"               # one row per cell; or the name of a report table
    [settings]                       # parsed like `icl-mech reproduce --set key=value`
    n_dev = 8
    pairs = [["country_continent", "country_capital"]]

Models: the names ``load_model`` takes (``icl_mech.models.MODELS``: ``tiny-gpt2`` /
``tiny-llama``, ``embedded``, ``gemma-3-270m``; a folder; a TransformerLens name). Tasks: bundled
names, task files (``"succ.csv"``, options in ``succ.task.json``; relative to the current
directory) or, in a dict grid, ``Task`` objects. A task is put in the method's task setting
(``tasks=(task,)``; ``pair_sets`` for icv) and a seed in ``seed``; setting either in
``[settings]`` is refused. A method without a task setting (icl-gd) refuses a tasks axis, and
one without a model (icl-gd) a models axis; its cells have ``task=None`` / ``model=None``.
Other methods (``Method``) can be passed by name to ``Grid.load(..., methods=...)``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from icl_mech import model_names, validate
from icl_mech.errors import IclMechError, unknown
from icl_mech.prompts import Task
from icl_mech.runner import REPRODUCTIONS
from icl_mech.settings import Settings
from icl_mech.sweeps.methods import Method, builtin_method
from icl_mech.sweeps.placement import Load, check_load
from icl_mech.tasks import label

TINY_MODELS = model_names.TINY
EMBEDDED = model_names.EMBEDDED
GRID_KEYS = ("method", "models", "tasks", "seeds", "quick", "table", "load", "settings")


@dataclass(frozen=True)
class Cell:
    """One run of the grid: a pure function of ``config()``."""

    method: str
    model: str | None
    task: str | None
    seed: int
    settings: Settings
    table: str
    spec: Method = field(compare=False, repr=False)
    load: Load = ()  # load_model's options, e.g. (("dtype", "bfloat16"),)

    def config(self) -> dict[str, Any]:
        """What the result depends on (the resolved settings, not just the overrides)."""
        config = {
            "method": self.method,
            "model": self.model,
            "task": self.task,
            "seed": self.seed,
            "table": self.table,
            # the thread count changes speed, not results: a cell is the same at any count
            "settings": {k: v for k, v in self.settings.as_dict().items() if k != "threads"},
        }
        return config | ({"load": dict(self.load)} if self.load else {})

    @functools.cached_property
    def key(self) -> str:
        return hashlib.sha256(canonical_json(self.config()).encode()).hexdigest()

    def provenance(self) -> dict[str, Any]:
        """Where the model comes from: a tiny model's arch and seed, a folder's path."""
        arch = TINY_MODELS.get(self.model)
        folder = None
        if self.model not in (None, EMBEDDED) and arch is None and Path(self.model).is_dir():
            folder = str(Path(self.model).expanduser().resolve())
        load = canonical_json(dict(self.load)) if self.load else None
        return {
            "model_arch": arch,
            "model_seed": 0 if arch else None,
            "model_path": folder,
            "model_load": load,
        }


def canonical_json(value) -> str:
    """Sorted keys, no spaces, tuples as lists; NaN or inf is refused (not valid JSON)."""
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except ValueError as error:
        raise IclMechError(f"cell config {value!r} is not canonical JSON ({error})") from None


@dataclass(frozen=True)
class Grid:
    """A validated grid; ``cells`` lists every (model, task, seed) combination."""

    method: str
    models: tuple[str | None, ...]
    tasks: tuple[str | None, ...]
    seeds: tuple[int, ...]
    overrides: Mapping[str, Any]
    quick: bool
    table: str
    cells: tuple[Cell, ...]
    source: str = "grid"
    load_options: Load = ()  # the [load] table, in every cell

    @classmethod
    def load(cls, grid, methods: Mapping[str, Method] | None = None) -> Grid:
        """A grid from a TOML file path or a dict (``methods`` adds methods by name)."""
        if isinstance(grid, Grid):
            return grid
        if isinstance(grid, Mapping):
            return cls.from_dict(grid, methods)
        if isinstance(grid, (str, Path)):
            return cls.from_toml(grid, methods)
        raise IclMechError(
            f"a grid is a TOML file path or a dict, got {type(grid).__name__}; "
            "e.g. Grid.load('examples/task_vectors_grid.toml')"
        )

    @classmethod
    def from_toml(cls, path: str | Path, methods: Mapping[str, Method] | None = None) -> Grid:
        path = Path(path).expanduser()
        try:
            import tomllib  # standard library from Python 3.11
        except ModuleNotFoundError:  # Python 3.10
            try:
                import tomli as tomllib  # optional: Python 3.10's TOML reader
            except ModuleNotFoundError:
                raise IclMechError(
                    "reading a TOML grid needs Python >= 3.11 or the tomli package "
                    "(pip install tomli); or pass the grid as a dict"
                ) from None
        if not path.is_file():
            raise IclMechError(
                f"grid file {str(path)!r} does not exist; give the path of a TOML grid "
                "(see examples/task_vectors_grid.toml)"
            )
        try:
            spec = tomllib.loads(path.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
            raise IclMechError(f"grid file {str(path)!r} is not valid TOML: {error}") from None
        return cls.from_dict(spec, methods, source=f"grid {path}")

    @classmethod
    def from_dict(
        cls, spec: Mapping, methods: Mapping[str, Method] | None = None, source: str = "grid"
    ) -> Grid:
        for key in sorted(set(spec) - set(GRID_KEYS)):
            raise IclMechError(f"{source}: {unknown('key', key, GRID_KEYS)}")

        extra = dict(methods or {})
        name = spec.get("method")
        if not isinstance(name, str) or name not in {*REPRODUCTIONS, *extra}:
            raise IclMechError(f"{source}: {unknown('method', name, [*REPRODUCTIONS, *extra])}")
        method = extra[name] if name in extra else builtin_method(name)
        quick = spec.get("quick", False)
        if not isinstance(quick, bool):
            raise IclMechError(f"{source}: quick={quick!r} must be true or false")
        table = spec.get("table", "headline")
        if not isinstance(table, str) or not table.strip():
            raise IclMechError(
                f"{source}: table={table!r} must be 'headline' or the name of a report table"
            )
        overrides = _overrides(spec.get("settings", {}), method, source)
        models = _models(spec, method, name, source)
        tasks = _tasks(spec, method, name, source)
        seeds = _seeds(spec, source)
        load = check_load(spec.get("load", {}), source) if method.needs_model else ()
        if "load" in spec and not method.needs_model:
            raise IclMechError(f"{source}: {name} loads no model; remove the load table")
        base = method.settings_class.quick if quick else method.settings_class.full
        cells = []
        for model in models:
            for task in tasks:
                for seed in seeds:
                    values = dict(overrides, seed=seed)
                    if method.task_field is not None:
                        values[method.task_field] = (task,)
                    shown = None if task is None else label(task)
                    try:
                        settings = base(**values)
                    except IclMechError as error:
                        raise IclMechError(f"{source} (task={shown!r}): {error}") from None
                    cells.append(Cell(name, model, shown, seed, settings, table, method, load))
        return cls(name, models, tasks, seeds, overrides, quick, table, tuple(cells), source, load)


def _axis(spec: Mapping, key: str, source: str, default=None) -> list:
    if key not in spec:
        if default is None:
            raise IclMechError(
                f"{source}: the {key!r} axis is missing; give a list, e.g. {key} = [...]"
            )
        return list(default)
    values = spec[key]
    if isinstance(values, (str, int)):
        values = [values]
    if not isinstance(values, (list, tuple)):
        raise IclMechError(f"{source}: {key} must be a list, got {values!r}")
    if not values:
        raise IclMechError(f"{source}: the {key!r} axis is empty; give at least one value")
    if len(set(map(repr, values))) != len(values):
        raise IclMechError(f"{source}: {key} lists a value twice: {list(values)}")
    return list(values)


def _models(spec: Mapping, method: Method, name: str, source: str) -> tuple:
    if not method.needs_model:
        if "models" in spec:
            raise IclMechError(
                f"{source}: {name} runs without a language model; remove the models axis"
            )
        return (None,)
    return tuple(check_model(m, source) for m in _axis(spec, "models", source))


def check_model(model, source: str = "grid") -> str:
    """A model name a cell can load, checked without loading anything: the same names as
    ``load_model`` (:mod:`icl_mech.model_names`: ``tiny-gpt2``, ``tiny-llama``, ``embedded``,
    ``gemma-3-270m``), a local Hugging Face folder or a TransformerLens name."""
    return model_names.check_name(model, where=source)


def _tasks(spec: Mapping, method: Method, name: str, source: str) -> tuple:
    if method.task_field is None:
        if "tasks" in spec:
            raise IclMechError(
                f"{source}: {name} has no task setting; remove the tasks axis "
                f"(its settings: {', '.join(method.settings_class.keys())})"
            )
        return (None,)
    tasks = _axis(spec, "tasks", source)
    bad = [t for t in tasks if not isinstance(t, (str, Task))]
    if bad:
        raise IclMechError(f"{source}: tasks must be names, task files or Tasks, got {bad}")
    return tuple(tasks)


def _seeds(spec: Mapping, source: str) -> tuple[int, ...]:
    """Each seed checked as settings check theirs, the error naming the grid's key."""
    return tuple(validate.seed(s, f"{source}: seeds") for s in _axis(spec, "seeds", source, [0]))


def _overrides(values, method: Method, source: str) -> dict[str, Any]:
    """Each ``[settings]`` value through the same parser as ``--set key=value``."""
    if not isinstance(values, Mapping):
        raise IclMechError(f"{source}: settings must be a table of key = value, got {values!r}")
    cls = method.settings_class
    axes = {"seed": "seeds", method.task_field: "tasks"}
    parsed = {}
    for key, value in values.items():
        if key in axes:
            raise IclMechError(
                f"{source}: set {key} through the grid's {axes[key]!r} axis, not [settings]"
            )
        try:
            parsed[key] = cls.parse(key, _as_text(value))
        except IclMechError as error:
            raise IclMechError(f"{source}: {error}") from None
    return parsed


def _as_text(value) -> str:
    """A TOML value as the command-line text ``Settings.parse`` reads (``a,b``, ``a:b,c:d``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        raise IclMechError(f"setting value {value} is not finite")
    if isinstance(value, (list, tuple)):
        return ",".join(":".join(map(_as_text, v)) if isinstance(v, list) else _as_text(v)
                        for v in value)  # fmt: skip
    if isinstance(value, (str, int, float)):
        return str(value)
    raise IclMechError(f"setting value {value!r} is not a number, a string, or a list of those")
