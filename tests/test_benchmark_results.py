"""The committed benchmark records, and the README's speed section quoting them.

Every ``benchmarks/results/*.json`` says how, where and when it was measured; every number in
the README's "Speed and memory" section is one of the numbers of the records that section
names, as printed (a ratio quoted as 0.68 is a ratio of the record that rounds to 0.68). Where a
record gives both wall-clock and CPU time, the README quotes CPU time (the steadier on a shared
machine), so only CPU time counts there; a command quoted in the section is a record's command,
character for character, and the numbers inside code spans are checked that way.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
HEADING = "## Speed and memory, side by side with the alternatives"
RECORDS = sorted(RESULTS.glob("*.json"))

# a number standing alone (not inside a name such as SmolLM2, Gemma-3-270M, 262k, a version
# such as 0.8.1 or 1e-3), with the unit written after it, if any
NUMBER = re.compile(
    r"(?<![\w.\-/])(?P<value>\d+(?:\.\d+)?)(?!\w|\.\d)"
    r"(?:\s?(?P<spaced>ms|MB|s)(?!\w)|(?P<attached>%|×))?"
)
FILE = re.compile(r"benchmarks/results/([\w.-]+\.json)")
CODE = re.compile(r"`[^`\n]*`")
COMMAND = re.compile(r"`(python benchmarks/[^`]*)`")
# of two clocks, the one the README quotes: the other is left out of the candidates
CLOCKS = {"wall": "cpu", "median_wall_s": "median_cpu_s"}
# the JSON key suffix of a quantity in a unit; ratios, counts and settings have none
UNITS = {"ms": "_ms", "s": "_s", "MB": "_mb"}


def section() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index(HEADING) + len(HEADING)
    end = text.find("\n## ", start)
    return text[start : end if end >= 0 else len(text)]


def leaves(value, path=()):
    """(key path, number) of every number in a record; versions give their major.minor too."""
    if isinstance(value, dict):
        for key, item in value.items():
            if CLOCKS.get(key) not in value:
                yield from leaves(item, (*path, str(key)))
    elif isinstance(value, list):
        for item in value:
            yield from leaves(item, path)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield path, float(value)
    elif isinstance(value, str) and path[:1] == ("versions",):
        release = re.match(r"(\d+)\.(\d+)", value)
        if release:
            yield path, float(f"{release[1]}.{release[2]}")


def unit_of(path) -> str | None:
    for unit, suffix in UNITS.items():
        if any(key.endswith(suffix) for key in path):
            return unit
    return None


def found(quoted: str, unit: str | None, numbers) -> bool:
    decimals = len(quoted.partition(".")[2])
    for path, value in numbers:
        if unit in UNITS:
            if unit_of(path) == unit and f"{value:.{decimals}f}" == quoted:
                return True
        elif unit_of(path) is None:
            if f"{value:.{decimals}f}" == quoted:
                return True
            if unit == "%" and f"{value * 100:.{decimals}f}" == quoted:
                return True
    return False


def blocks():
    """The section's paragraphs and tables, each with the records it draws on: those it names,
    else those the nearest block before it names."""
    named: list[str] = []
    for block in re.split(r"\n\s*\n", section()):
        here = FILE.findall(block)
        named = here or named
        yield block, list(dict.fromkeys(named))


@pytest.mark.parametrize("path", RECORDS, ids=[p.stem for p in RECORDS])
def test_record_says_how_where_and_when(path):
    record = json.loads(path.read_text(encoding="utf-8"))
    for key in ("command", "machine", "versions", "date"):
        assert record.get(key), f"{path.name}: no {key!r}"
    assert record["command"].startswith(f"python benchmarks/{path.stem}.py")
    assert {"cpu", "cores", "ram_gb", "os"} <= record["machine"].keys()
    assert {"python", "torch", "transformers", "transformer-lens", "icl_mech"} <= set(
        record["versions"]
    )
    text = path.read_text(encoding="utf-8")
    for private in ("/home/", "/tmp/", "/root/", "/Users/", "C:\\\\"):
        assert private not in text, f"{path.name} holds a machine-specific path"


def test_every_benchmark_has_a_record():
    scripts = {p.stem for p in (ROOT / "benchmarks").glob("[!_]*.py")}
    assert scripts <= {p.stem for p in RECORDS}


def test_speed_section_names_its_records():
    names = set(FILE.findall(section()))
    assert names, "the speed section names no benchmarks/results/*.json"
    missing = sorted(n for n in names if not (RESULTS / n).is_file())
    assert not missing, f"named in the README but not committed: {missing}"


def test_every_number_in_the_speed_section_is_in_its_records():
    loaded = {p.name: list(leaves(json.loads(p.read_text(encoding="utf-8")))) for p in RECORDS}
    unmatched = []
    for block, names in blocks():
        numbers = [n for name in names for n in loaded.get(name, [])]
        for match in NUMBER.finditer(CODE.sub(lambda code: " " * len(code[0]), block)):
            unit = match["spaced"] or match["attached"]
            if not found(match["value"], unit, numbers):
                context = block[max(match.start() - 40, 0) : match.end() + 20].replace("\n", " ")
                unmatched.append(f"{match['value']}{unit or ''} in {names}: ...{context}...")
    assert not unmatched, "README numbers not in the named records:\n" + "\n".join(unmatched)


def test_every_command_in_the_speed_section_is_a_record_s():
    commands = {json.loads(p.read_text(encoding="utf-8"))["command"] for p in RECORDS}
    quoted = COMMAND.findall(section())
    assert quoted, "the speed section quotes no benchmark command"
    assert not sorted(set(quoted) - commands), f"not the command of any record: {quoted}"
