"""`make gpu-check` (benchmarks/gpu_check.py) without a GPU: one line, status 0, no model loaded.

The checks themselves need a CUDA device, which CI does not have; ``--device cpu`` runs them on
the CPU by hand. Here the script runs with every CUDA device hidden, so the test holds on a GPU
machine too.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def gpu_check(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = os.environ | {"CUDA_VISIBLE_DEVICES": "", "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_without_a_gpu_it_prints_one_line_and_succeeds(tmp_path):
    done = gpu_check(cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout == (
        "gpu-check: no CUDA device on this machine; nothing to check "
        "(CPU numbers are checked by make test)\n"
    )
    assert "Traceback" not in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_bad_dtype_is_one_line_and_status_2(tmp_path):
    done = gpu_check("--dtypes", "float32,float64", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr
    assert "float64" in lines[0] and "float32, bfloat16" in lines[0]
