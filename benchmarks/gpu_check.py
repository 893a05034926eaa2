"""`make gpu-check`: do the methods give the CPU's numbers on a GPU, and how fast?

On the embedded model loaded on ``--device`` (default ``cuda``) in each of ``--dtypes``, six
method outputs are compared with the same outputs on the CPU in float32, on the small inputs
of ``tests/test_portability.py``: plain logits of a padded batch, anchor saliency scores,
function-vector indirect effects for two layers, the task-vector layer sweep, an ICV, and an
answer from a compressed cache. Each row gives the largest absolute difference, that
difference relative to the largest CPU value (float32 must stay within 1e-3, bfloat16 within
5e-2) and the device / CPU time ratio (one timed call after one warm-up forward). Then every
reproduction that uses a model runs once in quick mode on the device (into a temporary folder),
timed, and against the same quick run on the CPU with ``--compare-cpu`` (slow). With two or
more CUDA devices the checks run again with the model split over two (``n_devices=2``).

One table is printed, and written like every benchmark to benchmarks/results/gpu_check.json.
The exit status is 1 if a float32 row fails. Without a CUDA device the script prints one line
and exits 0: CI has no GPU and cannot run it. ``--device cpu`` runs it all on the CPU against
itself (differences zero), which is how it is tested without a GPU.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

SKIP = (
    "gpu-check: no CUDA device on this machine; nothing to check "
    "(CPU numbers are checked by make test)"
)
TOLERANCE = {"float32": 1e-3, "bfloat16": 5e-2}  # relative to the largest CPU value


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line and status 2, no usage block
        self.exit(2, f"gpu-check: {message}\n")


def dtype_list(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    bad = [name for name in names if name not in TOLERANCE]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"{text!r}: choose from {', '.join(TOLERANCE)}")
    return names


def arguments(argv=None) -> argparse.Namespace:
    parser = Parser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:1, cpu, ...")
    parser.add_argument("--dtypes", type=dtype_list, default=list(TOLERANCE),
                        help="comma-separated: float32,bfloat16 (default)")  # fmt: skip
    parser.add_argument("--skip-reproductions", action="store_true")
    parser.add_argument("--only", help="comma-separated reproduction names (default: all)")
    parser.add_argument("--compare-cpu", action="store_true",
                        help="also time each quick reproduction on the CPU (slow)")  # fmt: skip
    args = parser.parse_args(argv)
    try:
        device = torch.device(args.device)
    except RuntimeError:
        parser.error(f"--device {args.device!r} is not a torch device (e.g. cuda, cuda:1, cpu)")
    if device.type == "cuda" and torch.cuda.is_available():
        if (device.index or 0) >= torch.cuda.device_count():
            parser.error(f"--device {device}: this machine has {torch.cuda.device_count()} GPU(s)")
    args.parser = parser
    return args


def method_outputs(model) -> dict[str, tuple[torch.Tensor | str, float]]:
    """Each method's output on ``model`` (float32, on the CPU; or the error) and its seconds."""
    from icl_mech import ICLPrompt, PromptBatch, tasks
    from icl_mech.anchors import saliency
    from icl_mech.anchors.compression import answer, encode_shared
    from icl_mech.evaluation import build_prompts
    from icl_mech.function_vectors import effect_prompts, indirect_effects
    from icl_mech.icv import SENTIMENT_PAIRS, extract_icv
    from icl_mech.task_vectors import extract, sample_sets, sweep_logits

    sentiment, capitals = tasks.load("sentiment"), tasks.load("country_capital")
    pool, test = sentiment.split(4, seed=0)
    padded = build_prompts(pool, 1, test.examples[:2], seed=0)  # different lengths
    demos = pool.sample_demonstrations(1, random.Random(0))
    shared = [ICLPrompt.build(pool, demos, query) for query in test.examples[:3]]
    n, device = model.cfg.n_layers, model.cfg.device

    def logits():
        batch = PromptBatch.from_prompts(model, padded)
        with torch.no_grad():
            out = model(batch.tokens.to(device), attention_mask=batch.attention_mask.to(device))
        return out.cpu()[batch.attention_mask.bool()]  # the real (unpadded) positions

    def function_vectors():
        clean, shuffled = effect_prompts(capitals, 3, n_demonstrations=2, seed=0)
        layers = [n // 3, n // 2]
        return indirect_effects(model, clean, shuffled, layers=layers, batch_size=2).effects

    def task_vectors():
        tv_pool, tv_test = capitals.split(2, seed=0)
        layers, sets = [1, max(2, n // 2)], sample_sets(tv_pool, 2, 3, seed=0)
        theta = extract(model, tv_pool, sets, n_dummies=2, layers=layers, batch_size=4)
        queries = [ICLPrompt.zero_shot(capitals, query) for query in tv_test.examples]
        with torch.no_grad():
            batch = PromptBatch.from_prompts(model, queries)
            return sweep_logits(model, batch, theta.values[0], layers=layers, groups=2)

    def compression():
        cache, queries, _ = encode_shared(model, shared)
        with torch.no_grad():
            return answer(model, cache, queries)

    checks = {
        "logits": logits,
        "saliency": lambda: saliency(model, PromptBatch.from_prompts(model, padded)).scores,
        "function_vectors.indirect_effects": function_vectors,
        "task_vectors.sweep_logits": task_vectors,
        "icv.extract_icv": lambda: extract_icv(model, SENTIMENT_PAIRS[:3]).vector,
        "anchors.compression.answer": compression,
    }
    logits()  # warm-up (CUDA context, kernels)
    results = {}
    for name, check in checks.items():
        start = time.perf_counter()
        try:
            out = check().detach().float().cpu()  # .cpu() waits for the device
        except Exception as error:  # reported in the table, not raised
            out = short(error)
        results[name] = (out, time.perf_counter() - start)
    return results


def short(error: BaseException) -> str:
    """The error's first line, without this machine's paths (the record is committed)."""
    text = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error) else ''}"
    for private in (tempfile.gettempdir(), str(Path.home())):
        text = text.replace(private, "...")
    return text[:120]


def compare(reference, results, dtype: str, devices: int) -> list[dict]:
    rows = []
    for name, (out, seconds) in results.items():
        cpu, cpu_seconds = reference[name]
        row = dict(check=name, dtype=dtype, devices=devices, device_s=seconds, cpu_s=cpu_seconds)
        row.update(ratio=seconds / cpu_seconds, tolerance=TOLERANCE[dtype], passed=False, note="")
        if isinstance(out, str) or isinstance(cpu, str):
            row["note"] = out if isinstance(out, str) else f"CPU: {cpu}"
        elif out.shape != cpu.shape:
            row["note"] = f"shape {tuple(out.shape)}, CPU {tuple(cpu.shape)}"
        else:
            diff = float((out - cpu).abs().max()) if out.numel() else 0.0
            relative = diff / max(float(cpu.abs().max()), 1e-12)
            row.update(max_abs_diff=diff, rel_diff=relative)
            row["passed"] = bool(relative <= TOLERANCE[dtype])  # NaN fails
        rows.append(row)
    return rows


def reproductions(model, dtype: str, cpu_model, names: list[str], compare_cpu: bool) -> list[dict]:
    """One quick run per reproduction on ``model`` (and on ``cpu_model`` with compare_cpu)."""
    from icl_mech.runner import REPRODUCTIONS, reproduce

    def timed(name, on) -> tuple[float, str]:
        with tempfile.TemporaryDirectory(prefix="gpu-check-") as out:
            start = time.perf_counter()
            try:
                reproduce(name, on, quick=True, out=out, progress=False)
            except Exception as error:
                return time.perf_counter() - start, short(error)
            return time.perf_counter() - start, ""

    rows = []
    for name in names:
        row = dict(check=f"reproduce {name} --quick", dtype=dtype, devices=1)
        if not REPRODUCTIONS[name].needs_model:
            rows.append(row | dict(passed="skipped", note="skipped: needs no model (CPU only)"))
            continue
        seconds, error = timed(name, model)
        row.update(device_s=seconds, passed=not error, note=error or "completed")
        if compare_cpu:
            row["cpu_s"], cpu_error = timed(name, cpu_model)
            row["ratio"] = seconds / row["cpu_s"]
            row["note"] += f"; CPU: {cpu_error}" if cpu_error else ""
        rows.append(row)
    return rows


def table(rows: list[dict]):
    import pandas as pd

    columns = ["check", "dtype", "devices", "max_abs_diff", "rel_diff", "tolerance", "passed",
               "device_s", "cpu_s", "ratio", "note"]  # fmt: skip
    return pd.DataFrame(rows).reindex(columns=columns).rename(columns={"passed": "pass"})


def main(argv=None) -> int:
    args = arguments(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(SKIP)
        return 0
    os.environ.setdefault("TQDM_DISABLE", "1")  # no loading bars around the one table
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import _results

    from icl_mech import load_model
    from icl_mech.runner import REPRODUCTIONS

    names = list(REPRODUCTIONS) if args.only is None else args.only.split(",")
    if any(name not in REPRODUCTIONS for name in names):
        args.parser.error(f"--only {args.only!r}: choose from {', '.join(REPRODUCTIONS)}")
    torch.backends.cuda.matmul.allow_tf32 = False  # float32 means float32 (also torch's default)
    torch.backends.cudnn.allow_tf32 = False
    cpu_model = load_model(None, device="cpu", dtype=torch.float32)
    reference = method_outputs(cpu_model)
    rows = []
    repro_dtype = "float32" if "float32" in args.dtypes else args.dtypes[0]
    for dtype in args.dtypes:
        model = load_model(None, device=str(device), dtype=getattr(torch, dtype))
        rows += compare(reference, method_outputs(model), dtype, devices=1)
        if dtype == repro_dtype and not args.skip_reproductions:
            rows += reproductions(model, dtype, cpu_model, names, args.compare_cpu)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if device.type == "cuda" and gpus >= 2:
        split = load_model(None, device="cuda", dtype=torch.float32, n_devices=2)
        rows += compare(reference, method_outputs(split), "float32", devices=2)
    else:
        why = "one GPU" if device.type == "cuda" else f"--device {device}"
        rows.append(dict(check="n_devices=2", devices=2, passed="skipped", note=f"skipped: {why}"))
    frame = table(rows)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "the CPU"
    print(f"gpu-check: {device} ({name}) against the CPU in float32")
    print(frame.to_string(index=False, na_rep="", float_format=lambda x: f"{x:.3g}"))
    failed = [r for r in rows if r.get("dtype") == "float32" and r["passed"] is False]
    record = dict(device=str(device), device_name=name, gpus=gpus, rows=frame.to_dict("records"))
    path = _results.write("gpu_check", record | dict(failed=len(failed)))
    print(f"wrote benchmarks/results/{path.name}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
