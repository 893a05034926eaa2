"""Command line: ``icl-mech info | demo | check | reproduce NAME [--quick] [--set KEY=VALUE ...]``.

Every option is checked (settings, output folder) before a model is loaded; bad input prints
one line and exits with status 2. ``icl-mech reproduce NAME --help`` lists NAME's settings.
Quick runs and the demo write under ``runs/`` (ignored by git); the committed ``figures/``
is only written when asked for (``--out figures``, ``make figures``). ``icl-mech sweep GRID.toml``
runs a grid of reproductions into a resumable store (:mod:`icl_mech.sweeps`). ``icl-mech cache
list | clear [--all]``: the model cache's entries, current or stale (:mod:`icl_mech.cache_entries`).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from contextlib import ExitStack
from importlib.metadata import version
from pathlib import Path

from icl_mech import cache_entries, models, tasks, threads, validate
from icl_mech.catalogue import kinds
from icl_mech.check import CheckSettings
from icl_mech.check import check as run_check
from icl_mech.demo import run_demo
from icl_mech.errors import IclMechError, unknown
from icl_mech.model_names import MODELS, check_name
from icl_mech.models import load_model
from icl_mech.one_line_parser import OneLineParser
from icl_mech.output_lock import output_lock
from icl_mech.runner import REPRODUCTIONS, writable_folder
from icl_mech.runner import reproduce as run_one
from icl_mech.settings import ONE_WORD
from icl_mech.sweeps import run_command
from icl_mech.tasks import label
from icl_mech.tasks.difficulty import table as difficulty_table
from icl_mech.version import __version__

NAMES = (
    "anchors",
    "anchor-applications",
    "task-vectors",
    "function-vectors",
    "head-roles",
    "vector-atlas",
    "icv",
    "icl-gd",
)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if len(argv) > 1 and argv[0] == "reproduce" and argv[1] not in (*NAMES, "all"):
        if not argv[1].startswith("-"):
            return _fail(str(unknown("reproduction", argv[1], (*NAMES, "all"))))
    args = _parser(argv).parse_args(argv)
    try:
        commands = {"info": info, "demo": demo, "check": check, "reproduce": reproduce,
                    "sweep": sweep, "cache": cache_entries.command}  # fmt: skip
        with threads.fixed():  # the thread policy, read once before any model work
            return commands[args.command](args)
    except IclMechError as error:
        return _fail(str(error))
    except OSError as error:
        where = f" ({error.filename})" if error.filename else ""
        return _fail(f"{error.strerror or error}{where}")


def _fail(message: str) -> int:
    print(f"icl-mech: error: {' '.join(message.split())}", file=sys.stderr)
    return 2


def _parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = OneLineParser(prog="icl-mech", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("info", help="versions, model cache, bundled tasks and hook kinds")
    demo_parser = commands.add_parser(
        "demo", help="ICL accuracy on the model + quick reproductions of every paper"
    )
    _common(demo_parser, default_out="runs/demo")
    demo_parser.add_argument("--only-accuracy", action="store_true")
    check_parser = commands.add_parser(
        "check",
        help="a report card: does each method work on this model? (report.html, report.json)",
        epilog=_settings_help("check") if "-h" in argv or "--help" in argv else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(check_parser, default_out="runs/check")
    _settings_options(check_parser)
    reproduce_parser = commands.add_parser("reproduce", help="reproduce one paper's figures")
    methods = reproduce_parser.add_subparsers(dest="name", required=True, metavar="NAME")
    asking_help = "-h" in argv or "--help" in argv
    for name in (*NAMES, "all"):
        method = methods.add_parser(
            name,
            help=_paper(name),
            epilog=_settings_help(name) if asking_help else None,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        _common(method, default_out=None)
        _settings_options(method)
    _sweep_options(commands)
    cache = commands.add_parser("cache", help="list the model cache, or remove stale entries")
    actions = cache.add_subparsers(dest="action", required=True)
    actions.add_parser("list", help="each entry: what it is, its key, size, current or stale")
    clear = actions.add_parser("clear", help="remove stale entries and leftovers of builds")
    clear.add_argument("--all", action="store_true", help="remove everything in the cache")
    return parser


def _sweep_options(commands) -> None:
    parser = commands.add_parser(
        "sweep", help="run a grid of reproductions (TOML) into a resumable results store"
    )
    parser.add_argument("grid", type=Path, help="grid file (see examples/task_vectors_grid.toml)")
    parser.add_argument("--executor", choices=("local", "ray"), default="local")
    parser.add_argument("--address", default=None, help="Ray cluster to join (default: local)")
    parser.add_argument("--store", type=Path, default=None,
                        help="results folder (default: runs/sweeps/<grid name>)")  # fmt: skip
    parser.add_argument("--dry-run", action="store_true", help="list the cells and their state")
    parser.add_argument("--check-store", action="store_true",
                        help="test the store folder's file locks and atomic rename")  # fmt: skip


def _settings_options(parser) -> None:
    parser.add_argument("--quick", action="store_true", help="small, fast settings")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="change one setting (repeatable); lists are comma-separated, pairs a:b",
    )


def _common(parser, default_out: str | None) -> None:
    parser.add_argument(
        "--model",
        default=None,
        help=f"{', '.join(MODELS)} (see icl-mech info), a local Hugging Face folder or a "
        "TransformerLens name (default: embedded)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None if default_out is None else Path(default_out),
        help="output folder (default: runs/<name>; the committed full runs live in figures/)",
    )
    parser.add_argument("--seed", type=int, default=None, help="seed of every reproduction")


def _paper(name: str) -> str:
    return REPRODUCTIONS[name].paper if name in REPRODUCTIONS else "every reproduction"


def _settings_class(name: str):
    if name == "check":
        return CheckSettings
    return REPRODUCTIONS[name].settings_class()


def _settings_help(name: str) -> str:
    if name == "all":
        return "--set KEY=VALUE applies to every reproduction that has KEY."
    cls = _settings_class(name)
    full, quick = cls.full(), cls.quick()
    lines = [(cls.__doc__ or "").strip(), "", "settings (full run; --quick):"]
    for key in cls.keys():
        value, short = getattr(full, key), getattr(quick, key)
        shown = _show(value) + ("" if value == short else f"  (quick: {_show(short)})")
        lines.append(f"  {key:20s} {shown}")
    return "\n".join(lines)


def _show(value) -> str:
    if isinstance(value, tuple):
        return ",".join(":".join(map(label, v)) if isinstance(v, tuple) else label(v)
                        for v in value)  # fmt: skip
    return label(value)


def info(args) -> int:
    print(f"icl_mech {__version__}  python {platform.python_version()}")
    for package in ("torch", "transformer-lens", "transformers"):
        print(f"  {package:17s} {version(package)}")
    print(f"model cache: {models.cache_dir()}")
    print("models (--model, load_model, grids; or a local folder, or a TransformerLens name):")
    for name, description in MODELS.items():
        print(f"  {name:13s} {description}")
    kinds_shown = {"classification": "classification", "io": "input->output", "city": "city"}
    for kind, shown in kinds_shown.items():
        sizes = [f"{n} ({len(tasks.load(n).examples)})" for n in tasks.names(kind)]
        print(f"{shown} tasks (examples): {', '.join(sizes)}")
    print("  your own: --set tasks=FILE.csv|.json|.jsonl (options in FILE.task.json)")
    print("\n".join(difficulty_table()))
    pairs = [f"{n} ({len(tasks.load_pairs(n))})" for n in tasks.pair_names()]
    print(f"ICV pair sets (pairs): {', '.join(pairs)}")
    print(f"hook kinds: {', '.join(kinds())}")
    print(f"reproductions: {', '.join(NAMES)}")
    return 0


def reproduce(args) -> int:
    names = list(NAMES) if args.name == "all" else [args.name]
    plans = _plans(names, args.overrides, args.quick, args.seed)
    check_name(args.model, "--model")
    outs = {name: args.out or Path("runs") / name for name in names}

    with ExitStack() as locks:  # every out's lock before the model loads
        for out in dict.fromkeys(outs.values()):
            locks.enter_context(output_lock(writable_folder(out)))
        model = _model(args.model) if any(REPRODUCTIONS[n].needs_model for n in names) else None
        return _run(plans, model, outs)


def _plans(names, overrides: list[str], quick: bool, seed: int | None) -> dict:
    """Settings per reproduction, every override parsed and checked before any model work."""
    pairs = []
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise IclMechError(f"--set expects KEY=VALUE, got {item!r}")
        pairs.append((key.strip(), text))
    classes = {name: _settings_class(name) for name in names}
    for key, _ in pairs:
        if not any(key in cls.keys() for cls in classes.values()):
            valid = sorted({k for cls in classes.values() for k in cls.keys()})
            command = "icl-mech check" if names == ["check"] else f"icl-mech reproduce {names[0]}"
            error = unknown("setting", key, valid, hint=f"{command} --help")
            if ONE_WORD.get(key) in valid:
                error = f"the setting {key!r} is called {ONE_WORD[key]!r}"
            raise IclMechError(f"{'/'.join(names)}: {error}")
    plans = {}
    for name, cls in classes.items():
        values = {k: cls.parse(k, text) for k, text in pairs if k in cls.keys()}
        if seed is not None:
            values["seed"] = validate.seed(seed, "--seed")
        plans[name] = cls.quick(**values) if quick else cls.full(**values)
    return plans


def _model(name: str | None):
    print(f"loading {name or 'the embedded model'} ...", flush=True)
    return load_model(name)


def _run(plans: dict, model, outs: dict) -> int:
    for name, settings in plans.items():
        print(f"== {name} ==", flush=True)
        report = run_one(name, model, settings, out=outs[name])
        print(report.summary(), flush=True)
        files = f"{len(report.tables)} tables and {len(report.figures)} figures"
        print(f"wrote {files} to {outs[name]}", flush=True)
    return 0


def check(args) -> int:
    settings = _plans(["check"], args.overrides, args.quick, args.seed)["check"]
    check_name(args.model, "--model")
    out = writable_folder(args.out)
    with output_lock(out):  # before the model loads: a second run into out is refused
        card = run_check(_model(args.model), settings)
        print(f"report card of {card.model} ({card.seconds:.0f} s)")
        print(card.table())
        paths = card.write(out)
    print(f"wrote {', '.join(str(p) for p in paths)}")
    return 0


def sweep(args) -> int:
    return run_command(args.grid, args.executor, args.address, args.store, args.dry_run,
                       args.check_store)  # fmt: skip


def demo(args) -> int:
    out = writable_folder(args.out)
    seed = 0 if args.seed is None else validate.seed(args.seed, "--seed")
    plans = {} if args.only_accuracy else _plans(list(NAMES), [], True, seed)
    run_demo(out, plans, seed, lambda: _model(args.model))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
