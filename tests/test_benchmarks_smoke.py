"""Each benchmark script runs once in --smoke mode (tiny model, data and budgets) so that it cannot rot.

Benchmarks, not tests: nothing here checks a speed or a loss value, only that the script exits 0 and prints its
result table. Outputs go to benchmarks/results/tmp/smoke/ (git-ignored), never over the real results.
"""
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

SCRIPTS = {
    "speedrun_vs_esm2.py": "| reference (HF EsmForMaskedLM + AdamW) |",
    "ablations.py": "| full recipe (seed 1) |",
    "attention_scaling.py": "| row length T |",
    "bench_model.py": "| HF EsmForMaskedLM (sdpa, padded) |",
    "bench_dataloader.py": "M row tok/s/worker",
    "bench_subnormals.py": "| matmul, 100% subnormal inputs      | on",
}
# Results files the smoke runs must write (issue 12: every benchmark saves its numbers), under results/tmp/smoke/.
RESULT_FILES = {"bench_model.py": "bench_model.json", "bench_dataloader.py": "bench_dataloader.json",
                "bench_subnormals.py": "bench_subnormals.json"}


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_benchmark_smoke(script, shared_data):
    if script in ("speedrun_vs_esm2.py", "bench_model.py"):
        pytest.importorskip("transformers")  # the reference implementation's benchmark-only dependency
    started = time.time()
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--smoke"], cwd=ROOT,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{script} --smoke failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    assert SCRIPTS[script] in result.stdout, f"{script} --smoke printed no result table:\n{result.stdout[-3000:]}"
    assert "machine: " in result.stdout  # every benchmark names the machine it ran on
    if script in RESULT_FILES:
        written = ROOT / "benchmarks" / "results" / "tmp" / "smoke" / RESULT_FILES[script]
        assert written.exists() and written.stat().st_mtime >= started - 1, f"{script} --smoke wrote no {written}"
