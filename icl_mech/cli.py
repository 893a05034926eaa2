"""Command line: ``icl-mech info``, ``icl-mech demo``, ``icl-mech reproduce NAME``."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import time
from pathlib import Path

# name -> (module with run(), whether run() takes a model)
REPRODUCTIONS = {
    "anchors": ("icl_mech.anchors.reproduce", True),
    "anchor-applications": ("icl_mech.anchors.app_reproduce", True),
    "task-vectors": ("icl_mech.task_vectors.reproduce", True),
    "icv": ("icl_mech.icv.reproduce", True),
    "icl-gd": ("icl_mech.gd.reproduce", False),
}
DEMO_TASKS = ("sentiment", "question_type", "topic", "emotion")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="icl-mech", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("info", help="versions, model cache and bundled tasks")
    demo = commands.add_parser(
        "demo", help="ICL accuracy on the embedded model + quick reproductions of every paper"
    )
    _common(demo)
    demo.add_argument("--only-accuracy", action="store_true")
    reproduce = commands.add_parser("reproduce", help="reproduce one paper's figures")
    reproduce.add_argument("name", choices=[*REPRODUCTIONS, "all"])
    _common(reproduce)
    reproduce.add_argument("--quick", action="store_true", help="small, fast settings")
    reproduce.add_argument("--tasks", nargs="+", help="task names (where the method takes them)")
    reproduce.add_argument("--n", type=int, help="number of test examples per task")
    args = parser.parse_args(argv)
    return {"info": info, "demo": demo_command, "reproduce": reproduce_command}[args.command](args)


def _common(parser) -> None:
    parser.add_argument(
        "--model",
        default=None,
        help="local HF folder or TransformerLens name (default: the embedded SmolLM2-135M)",
    )
    parser.add_argument("--out", type=Path, default=Path("figures"), help="output folder")
    parser.add_argument("--seed", type=int, default=0)


def info(args) -> int:
    from importlib.metadata import version

    from icl_mech import models, tasks
    from icl_mech.hooks import kinds

    print(f"icl_mech {version('icl_mech')}  python {platform.python_version()}")
    for package in ("torch", "transformer-lens", "transformers"):
        print(f"  {package:17s} {version(package)}")
    print(f"model cache: {models.cache_dir()}")
    print(f"hook kinds: {', '.join(kinds())}")
    for kind in ("classification", "io", "city"):
        print(f"{kind} tasks: {', '.join(tasks.names(kind))}")
    return 0


def demo_command(args) -> int:
    from icl_mech import load_model, plotting, tasks
    from icl_mech.evaluation import icl_accuracy

    model = load_model(args.model)
    results = []
    print(f"{'task':15s} {'0-shot':>7s} {'1-shot/class':>13s}")
    for name in DEMO_TASKS:
        zero, few = (
            icl_accuracy(model, tasks.load(name), shots=s, n_queries=64, seed=args.seed)
            for s in (0, 1)
        )
        results += [zero, few]
        print(f"{name:15s} {zero.accuracy:7.3f} {few.accuracy:13.3f}")
    path = plotting.save(
        plotting.accuracy_figure(results, model.cfg.model_name), args.out, "icl_accuracy"
    )
    print(f"wrote {path}")
    if args.only_accuracy:
        return 0
    return _reproduce(available(), model, args.model, args.out, quick=True, seed=args.seed)


def available() -> list[str]:
    """Reproductions whose module is present in this installation."""
    found = []
    for name, (module, _) in REPRODUCTIONS.items():
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as error:
            if error.name and module.startswith(error.name):
                continue
            raise
        found.append(name)
    return found


def reproduce_command(args) -> int:
    names = available() if args.name == "all" else [args.name]
    options = {k: v for k, v in (("tasks", args.tasks), ("n", args.n)) if v is not None}
    model = None
    if any(REPRODUCTIONS[n][1] for n in names):
        from icl_mech import load_model

        model = load_model(args.model)
    return _reproduce(names, model, args.model, args.out, args.quick, args.seed, **options)


def _reproduce(names, model, model_name, out: Path, quick: bool, seed: int, **options) -> int:
    summary = {}
    for name in names:
        module, needs_model = REPRODUCTIONS[name]
        run = importlib.import_module(module).run
        start = time.perf_counter()
        print(f"== {name} ({'quick' if quick else 'full'}) ==", flush=True)
        kwargs = dict(out_dir=out, quick=quick, seed=seed, **options)
        result = run(model, **kwargs) if needs_model else run(**kwargs)
        summary[name] = {"seconds": round(time.perf_counter() - start, 1), **_jsonable(result)}
        print(json.dumps(summary[name], indent=1, default=str), flush=True)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"summary{'_quick' if quick else ''}.json"
    previous = json.loads(path.read_text()) if path.is_file() else {}
    path.write_text(json.dumps({**previous, **summary}, indent=1, default=str))
    return 0


def _jsonable(result) -> dict:
    if not isinstance(result, dict):
        return {"result": str(result)}
    return {
        k: v
        for k, v in result.items()
        if isinstance(v, (int, float, str, bool, list, dict, type(None)))
    }


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
