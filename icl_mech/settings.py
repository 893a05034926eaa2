"""One settings style for every reproduction: a frozen dataclass whose field defaults are the
full (paper-scale) run, with ``quick()`` / ``full()``, checked in ``__post_init__`` before any
model work, and each field parsed from its command-line text by its type."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any, ClassVar

from icl_mech import validate
from icl_mech.errors import IclMechError, unknown

MAX_THREADS = 1024  # more than any CPU here; torch overflows far above


@dataclass(frozen=True)
class Settings:
    """Knobs of one reproduction. Field defaults are the full (paper-scale) run; ``quick()``
    shrinks them. Subclasses validate in ``check()``, called by ``__post_init__``."""

    QUICK: ClassVar[dict[str, Any]] = {}
    seed: int = 0
    # intra-op CPU threads during the run; None: the default policy, the cores free when the run
    # starts or ICL_MECH_THREADS (icl_mech.threads.default_threads), the same for every command
    threads: int | None = None

    def __post_init__(self):
        where = _label(type(self))
        self._set("seed", validate.seed(self.seed, f"{where}: seed"))  # a numpy int: an int
        if self.threads is not None:
            threads = validate.count(self.threads, f"{where}: threads", maximum=MAX_THREADS,
                                     hint=" or None")  # fmt: skip
            self._set("threads", threads)
        self.check()

    def check(self) -> None:
        """Raise ``IclMechError`` for a bad value (before any model work)."""

    @classmethod
    def full(cls, **overrides) -> Settings:
        return cls().replace(**overrides)

    @classmethod
    def quick(cls, **overrides) -> Settings:
        return cls(**cls.QUICK).replace(**overrides)

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    def replace(self, **overrides) -> Settings:
        for key in sorted(set(overrides) - set(self.keys())):
            raise _unknown_setting(type(self), key)
        return dataclasses.replace(self, **overrides) if overrides else self

    @classmethod
    def parse(cls, key: str, text: str) -> Any:
        """The value of ``key`` from its command-line text (``"8"``, ``"a,b"``, ``"a:b,c:d"``)."""
        if key not in cls.keys():
            raise _unknown_setting(cls, key)
        hint = typing.get_type_hints(cls)[key]
        try:
            return _parse(hint, text.strip())
        except (TypeError, ValueError) as error:
            raise IclMechError(
                f"{_label(cls)}: setting {key}={text!r} is not a valid {_type_name(hint)} ({error})"
            ) from None

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe: tuples as lists, a ``Task`` (or anything with ``provenance()``) as its
        provenance record (name, kind, size, source file, sha256 of its content)."""
        return {k: _lists(v) for k, v in self.__dict__.items()}

    def _set(self, name: str, value: Any) -> None:
        """For ``check()`` only: store the checked form of a setting (e.g. a task file read)."""
        object.__setattr__(self, name, value)


def _lists(value):
    if isinstance(value, tuple):
        return [_lists(v) for v in value]
    provenance = getattr(value, "provenance", None)
    return provenance() if callable(provenance) else value


# the words of one idea that the package no longer uses, and the one it uses
ONE_WORD = {"scale": "strength", "shots": "n_demonstrations", "n_queries": "n_test"}


def _unknown_setting(cls: type, key: str) -> IclMechError:
    now = ONE_WORD.get(key)
    if now in cls.keys():
        return IclMechError(f"{_label(cls)}: the setting {key!r} is called {now!r}")
    listed = f"{cls.__module__}.{cls.__qualname__}.keys()"
    return IclMechError(f"{_label(cls)}: {unknown('setting', key, cls.keys(), hint=listed)}")


def _label(cls: type) -> str:
    parts = cls.__module__.split(".")
    return f"{parts[1] if len(parts) > 1 else parts[0]} settings"


def _parse(hint, text: str):
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if type(None) in args and text.lower() in ("none", ""):
            return None
        return _parse(next(a for a in args if a is not type(None)), text)
    if origin is tuple:
        items = [t.strip() for t in text.split(",") if t.strip()]
        if args[-1] is Ellipsis:
            return tuple(_parse(args[0], item) for item in items)
        parts = text.split(":")
        if len(parts) != len(args):
            raise ValueError(f"expected {len(args)} parts separated by ':'")
        return tuple(_parse(a, p.strip()) for a, p in zip(args, parts))
    if hint is bool:
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError("expected true or false")
    if typing.get_origin(hint) is typing.Literal:
        if text not in args:
            raise ValueError(f"expected one of {list(args)}")
        return text
    return hint(text)


def _type_name(hint) -> str:
    return getattr(hint, "__name__", str(hint).replace("typing.", ""))


def positive(settings: Settings, *names: str, allow_zero: bool = False) -> None:
    """Each named integer setting is >= 1 (>= 0 with ``allow_zero``)."""
    for name in names:
        validate.count(getattr(settings, name), f"{_label(type(settings))}: {name}",
                       minimum=0 if allow_zero else 1)  # fmt: skip


def one_of(settings: Settings, name: str, options) -> None:
    validate.choice(getattr(settings, name), f"{_label(type(settings))}: {name}", list(options))


def known(settings: Settings, name: str, available, what: str | None = None) -> None:
    """Every name in the tuple setting ``name`` is among ``available`` (a misspelt one gets a
    did-you-mean; ``what`` names one item, e.g. "pair set")."""
    values, available = getattr(settings, name), list(available)
    if not values:
        raise IclMechError(f"{_label(type(settings))}: {name} is empty; choose from {available}")
    for value in values:
        if value not in available:
            error = unknown(what or name.removesuffix("s").replace("_", " "), value, available)
            raise IclMechError(f"{_label(type(settings))}: {name}: {error}")


def consecutive_seeds(settings: Settings, n_seeds: int) -> list[int]:
    """``seed, seed + 1, ...``: ``n_seeds`` seeds (one per repetition), each a valid seed."""
    last = settings.seed + n_seeds - 1
    validate.seed(last, f"{_label(type(settings))}: seed + n_seeds - 1 (the last seed)")
    return list(range(settings.seed, last + 1))


def where(settings: Settings) -> str:
    """How error messages name these settings (``"task_vectors settings"``)."""
    return _label(type(settings))
