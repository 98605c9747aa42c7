"""What subnormal floats cost this CPU, and what flush-to-zero gives back: one thread, fp32, timed in one run.

    python benchmarks/bench_subnormals.py            # ~1 min
    python benchmarks/bench_subnormals.py --smoke    # a few seconds (CI): checks the script runs end to end

A float32 below 1.18e-38 is subnormal. Many x86 CPUs handle subnormal operands or results in microcode, tens to
hundreds of times slower than normal numbers, unless the thread sets flush-to-zero / denormals-are-zero
(`torch.set_flush_denormal(True)`, which `distributed.setup()` and the HF reference do on CPU). Training makes such
numbers where probabilities or activations underflow: a softmax over large attention scores (exp of < -87.3), or
the tails of GELU. This script times, on this machine, with flush-to-zero off and then on:
  1. a (1024 x 512) @ (512 x 512) matmul whose left operand has 0%, 1% or 100% subnormal entries;
  2. exp() of 1024 x 512 numbers whose results are normal, or fall in the subnormal range;
and prints each against its all-normal case measured in the same run (results/bench_subnormals.{md,json}; --smoke:
results/tmp/smoke/, git-ignored). A ratio near 1 means this CPU does not care; docs/RESULTS.md, "Subnormal floats",
has what it meant for one training run.
"""
import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import RESULTS, machine_info, machine_line, write_json  # noqa: E402  (puts the root on sys.path)
import distributed  # noqa: E402

SUBNORMAL = 1e-39  # a float32 subnormal (the smallest normal float32 is 1.18e-38); set while flush is off


def best_ms(fn, repeats: int) -> float:
    """The fastest of `repeats` calls, in milliseconds, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * min(times)


def operands(fraction: float, generator: torch.Generator) -> torch.Tensor:
    """A 1024 x 512 matrix of N(0, 1) entries, `fraction` of them scaled into the subnormal range."""
    a = torch.randn(1024, 512, generator=generator)
    pick = torch.rand(1024, 512, generator=generator) < fraction
    return torch.where(pick, a * SUBNORMAL, a)


def measure(flush: bool, repeats: int) -> list[dict]:
    """The timed cases with flush-to-zero set to `flush`; the thread's setting is restored afterwards."""
    generator = torch.Generator().manual_seed(0)
    b = torch.randn(512, 512, generator=generator)
    exp_normal = torch.randn(1024, 512, generator=generator)
    exp_underflow = -95.0 + torch.randn(1024, 512, generator=generator)  # exp() lands in (1e-43, 1e-38)
    cases = [(f"matmul, {100 * f:g}% subnormal inputs", operands(f, generator), "matmul") for f in (0.0, 0.01, 1.0)]
    cases += [("exp, normal results", exp_normal, "exp"), ("exp, subnormal results", exp_underflow, "exp")]
    previous = distributed.subnormals_flushed()  # torch has a setter only
    supported = torch.set_flush_denormal(flush)  # False where the CPU has no such mode
    rows = []
    try:
        for name, x, op in cases:
            fn = (lambda x=x: x @ b) if op == "matmul" else (lambda x=x: torch.exp(x))
            rows.append({"case": name, "op": op, "flush_to_zero": flush, "supported": supported,
                         "ms": best_ms(fn, repeats)})
    finally:
        torch.set_flush_denormal(previous)
    for row in rows:  # each case against the all-normal case of its op, same setting, same run
        base = next(r["ms"] for r in rows if r["op"] == row["op"])
        row["vs_normal"] = row["ms"] / base
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="few repeats, finishes in a few seconds")
    parser.add_argument("--repeats", type=int, default=10, help="timed calls per case (the fastest is kept)")
    parser.add_argument("--out", default=str(RESULTS / "bench_subnormals"), help="writes OUT.md and OUT.json")
    args = parser.parse_args()
    if args.smoke:
        args.repeats = 1
        if args.out == parser.get_default("out"):
            args.out = str(RESULTS / "tmp" / "smoke" / "bench_subnormals")
    torch.set_num_threads(1)  # as each training process of the CPU benchmarks
    info = machine_info()
    print(machine_line(info))
    rows = measure(False, args.repeats) + measure(True, args.repeats)
    lines = [f"| {'case':<34} | flush-to-zero | {'ms':>8} | vs all-normal |", f"|{'-' * 36}|---|---:|---:|"]
    lines += [f"| {r['case']:<34} | {'on' if r['flush_to_zero'] else 'off':<13} | {r['ms']:>8.2f} | "
              f"{r['vs_normal']:>12.1f}x |" for r in rows]
    table = "\n".join(lines)
    print(f"\n{table}")
    out = Path(args.out)
    load = os.getloadavg()[0]
    write_json(out.with_suffix(".json"), {"machine": info, "args": vars(args), "loadavg_at_end": load, "rows": rows})
    out.with_suffix(".md").write_text(f"{machine_line(info)}\none thread, fp32; load average at the end {load:.1f}"
                                      f"\n\n{table}\n")
    print(f"wrote {out}.md/.json")


if __name__ == "__main__":
    main()
