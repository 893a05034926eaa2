"""The one error type of the package, and the message for a name not in a catalogue."""

import difflib
import ntpath
import posixpath


class IclMechError(ValueError):
    """Bad input, raised before any forward pass; the message names what was wrong."""


def close_matches(given, choices, n: int = 3) -> list[str]:
    """The names among ``choices`` closest to ``given`` (case-insensitive), best first."""
    by_lower = {str(c).lower(): str(c) for c in choices}
    close = difflib.get_close_matches(str(given).lower(), list(by_lower), n=n, cutoff=0.6)
    return [by_lower[c] for c in close]


def unknown(what: str, given, choices, hint: str | None = None) -> IclMechError:
    """The error for a name that is not in a catalogue: ``unknown task 'sentimnet'; did you mean
    'sentiment'? (28 tasks: see icl_mech.tasks.names())``. Up to ten choices are listed; a longer
    catalogue is counted and ``hint`` says where to list it (returned, so ``raise unknown(...)``).
    """
    choices = [str(c) for c in choices]
    close = close_matches(given, choices)
    message = f"unknown {what} {given!r}"
    if looks_like_path(given):
        message += f"; a {what} is a name, never a path"
    if close:
        message += "; did you mean " + " or ".join(repr(c) for c in close) + "?"
    if len(choices) <= 10:
        message += f" (choose from {', '.join(choices) or 'nothing'})"
    else:
        message += f" ({len(choices)} {_plural(what)}" + (f": see {hint})" if hint else ")")
    return IclMechError(message)


def _plural(what: str) -> str:
    last = what.split()[-1]
    return what if last.endswith("s") else what + "s"


def looks_like_path(given) -> bool:
    """``given`` is written as a path (a separator, ``..``, NUL, or absolute on any system): a
    catalogue looks such a name up in its list and never joins it to a folder."""
    if not isinstance(given, str):
        return False
    return (
        any(part in given for part in ("/", "\\", "..", "\0"))
        or posixpath.isabs(given)
        or ntpath.isabs(given)
    )
