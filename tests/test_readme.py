"""The README's Python blocks run as written, in order, and print what the README shows."""

import contextlib
import io
import re
from pathlib import Path

import pytest

import icl_mech

README = Path(__file__).parent.parent / "README.md"
FENCE = re.compile(r"```(\w*)\n(.*?)```", re.DOTALL)


def blocks() -> list[tuple[str, str | None]]:
    """(python code, the text block right after it or None)."""
    fences = FENCE.findall(README.read_text())
    out = []
    for i, (language, body) in enumerate(fences):
        if language == "python":
            following = fences[i + 1] if i + 1 < len(fences) else ("", "")
            out.append((body, following[1] if following[0] == "text" else None))
    return out


def _lines(text: str) -> list[str]:
    return [line.rstrip() for line in text.strip().splitlines()]


def test_every_python_block_is_followed_by_its_output():
    found = blocks()
    assert len(found) >= 4
    assert all(expected is not None for _, expected in found)


@pytest.mark.embedded
def test_readme_blocks_run_and_print_what_the_readme_shows(embedded, monkeypatch):
    monkeypatch.setattr(icl_mech, "load_model", lambda *args, **kwargs: embedded)
    namespace: dict = {"__name__": "readme"}
    for code, expected in blocks():
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            exec(compile(code, str(README), "exec"), namespace)
        assert _lines(printed.getvalue()) == _lines(expected), code
