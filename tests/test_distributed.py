"""distributed.setup on CPU: subnormal floats are flushed to zero in every intra-op thread, and the check can fail.

Each case runs in a fresh process: the mode is per thread and inherited by the threads torch starts later, so the
pytest process's state (pools long started, other tests' settings) would say nothing, and must not be changed.
"""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PROBE = """
import sys, torch
sys.path.insert(0, {root!r})
import distributed
torch.set_num_threads(2)
{first}
x = distributed.subnormals(1 << 22)
kept_before = int(((x * 1.0) != 0).sum())
{then}
kept_after = int(((x * 1.0) != 0).sum())
print(kept_before, kept_after, flushed)
"""


def run_probe(first: str, then: str) -> tuple[int, int, str]:
    """Runs `first`, counts the subnormals a multiply keeps, runs `then` (which sets `flushed`), counts again."""
    code = PROBE.format(root=str(ROOT), first=first, then=then)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    before, after, flushed = out.stdout.split()
    return int(before), int(after), flushed


def test_setup_on_cpu_flushes_subnormals_in_every_thread():
    before, after, flushed = run_probe("flushed = distributed.setup().subnormals_flushed", "")
    assert (before, after, flushed) == (0, 0, "True")


def test_without_the_flush_subnormals_survive_and_a_late_flush_is_reported():
    # The pool of two threads starts in the first multiply, before the flush: the worker thread keeps subnormals,
    # only the main thread's half is flushed, and flush_subnormals says so.
    before, after, flushed = run_probe("", "flushed = distributed.flush_subnormals()")
    assert before == 1 << 22
    assert 0 < after < 1 << 22 and flushed == "False"
