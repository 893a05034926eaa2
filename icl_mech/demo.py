"""``icl-mech demo``: ICL accuracy on four bundled tasks (0-shot vs one demonstration per class)
and a quick run of every reproduction, written into one folder all or none
(:mod:`icl_mech.atomic_output`): ``index.md`` says what each file holds, ``report.json``
(written last) lists every file with its sha256.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from icl_mech import plotting, tasks
from icl_mech.atomic_output import publish, seal, staging
from icl_mech.evaluation import icl_accuracy
from icl_mech.report import ABOUT, write_index, write_table
from icl_mech.runner import reproduce
from icl_mech.settings import Settings
from icl_mech.version import __version__

DEMO_TASKS = ("sentiment", "question_type", "topic", "emotion")
N_TEST = 64


def run_demo(out: Path, plans: dict[str, Settings], seed: int, load: Callable) -> list[Path]:
    """The demo on the model ``load()`` returns (called holding ``out``'s lock), with the
    reproductions' settings ``plans``; the paths written in ``out``, ``report.json`` last."""
    with staging(out) as folder:
        model = load()
        name = model.cfg.model_name
        results = []
        print(f"{'task':15s} {'0-shot':>18s} {'1-shot/class':>18s}  "
              f"({N_TEST} held-out queries, 95% CI)")  # fmt: skip
        for task in DEMO_TASKS:
            zero, few = (
                icl_accuracy(model, tasks.load(task), n_demonstrations=s, n_test=N_TEST, seed=seed)
                for s in (0, 1)
            )
            results += [zero, few]
            print(f"{task:15s} {zero.estimate()!s:>18s} {few.estimate()!s:>18s}", flush=True)
        plotting.save_figure(plotting.accuracy_figure(results, name), folder, "icl_accuracy")
        write_table(plotting.accuracy_frame(results).assign(model=name), folder, "icl_accuracy")
        reports = []
        for reproduction, settings in plans.items():
            print(f"== {reproduction} ==", flush=True)
            reports.append(reproduce(reproduction, model, settings))
            reports[-1].write_into(folder)
            print(reports[-1].summary(), flush=True)
        what = f"{', '.join(DEMO_TASKS)}: 0-shot vs 1 demonstration per class"
        what += f", {N_TEST} held-out queries"
        made = {"icl_accuracy.png": f"figure: ICL accuracy on {what}"}
        made |= {
            f"icl_accuracy.{end}": f"that accuracy as a table ({end})" for end in ("csv", "md")
        }
        sections = {"ICL accuracy": made} | {ABOUT[r.name].paper: r.describe() for r in reports}
        sections["This folder"] = {"report.json": "every file here with its sha256 and size"}
        write_index(folder, f"icl-mech demo on {name}", sections)
        record = {"model": name, "icl_mech": __version__, "seed": seed, "tasks": DEMO_TASKS,
                  "reproductions": list(plans)}  # fmt: skip
        seal(folder, "report.json", record)
        paths = publish(folder, out, "report.json")
    print(f"wrote {len(paths)} files to {out} (what each holds: {out / 'index.md'})")
    return paths
