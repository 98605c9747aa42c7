"""A learning-rate sweep that a reviewer accepts, then seeds at the chosen LR: the same procedure for every recipe.

    python benchmarks/sweep.py --out logs/sweeps/esm2 --lr_key lr --lrs 1e-3 3e-3 1e-2 \\
        --screen_minutes 10 --minutes 20 --seeds 1 2 3 -- \\
        --yaml_path example_yamls/cpu_track.yaml --recipe esm2 --architecture esm2 …
    python benchmarks/sweep.py --program hf_reference --out logs/sweeps/hf --lrs 1e-3 3e-3 1e-2 \\
        --screen_minutes 10 --minutes 20 --seeds 1 2 3 -- --data_dir data/sp50 --hidden_size 128 …

1. Screen: one run per LR in `--lrs` and per seed in `--screen_seeds` (2 seeds per point is the protocol of
   issue 12), each with `--screen_minutes` of training clock. The LR with the lowest mean final validation loss wins;
   a run that diverged or failed counts as infinitely bad.
2. The edge rule: if the winner is the smallest or the largest LR of the grid, the grid is extended one step
   further in that direction (by the ratio of the two outermost LRs on that side) and the new point is screened,
   at most `--max_extensions` times. A best point left on the edge is reported as such (`at_edge` in the JSON).
3. Seeds: one run per `--seeds` at the chosen LR with `--minutes` of training clock.

Everything after `--` goes to the program unchanged (train.py keys, or hf_reference.py flags). The sweep sets the
LR key, the seed, the clock and where the record goes; giving those after `--` as well is refused. Every run is a
separate process with one thread (harness.run_logged), one after another. Runs whose JSON record already exists
with status ok are kept, not rerun (a screen is finished on the kind of CPU it began on: a screen run is refused
while a kept one comes from another; a finished screen's seed runs may be added anywhere), so a sweep cut
short by the end of a session resumes where it stopped, and calling it once per seed for each recipe in turn
interleaves the recipes' seed runs (`final` in sweep.json lists every seed run in the folder, each checked to be at
the chosen LR and clock).
`{out}/sweep.json` holds the screen table, the chosen LR and the seed runs; compare groups with
`benchmarks/compare_runs.py --group NAME {out}/final_s*.json …`.
"""
import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402  (also puts the repository root on sys.path)
import provenance  # noqa: E402

PROGRAMS = ("train", "hf_reference")
SET_BY_SWEEP = {"train": ("--seed", "--max_train_time_hours", "--log_dir", "--log_name", "--save_dir"),
                "hf_reference": ("--seed", "--budget_s", "--output")}  # and --{lr_key} for both


def command(program: str, lr_key: str, lr: float, seed: int, minutes: float, out: Path, stem: str,
            passthrough: list[str]) -> list:
    """The process to start for one run; its JSON record is `out/stem.json` for both programs."""
    if program == "train":
        return harness.train_py([*passthrough, f"--{lr_key}", lr, "--seed", seed, "--max_train_time_hours",
                                 minutes / 60], out, stem)
    return [sys.executable, harness.ROOT / "benchmarks" / "hf_reference.py", *passthrough, "--lr", lr,
            "--seed", seed, "--budget_s", 60 * minutes, "--output", out / f"{stem}.json"]


def final_loss(record: dict | None) -> float:
    """A run's final validation loss; a missing, failed or diverged run is infinitely bad."""
    if not record or record.get("status") != "ok":
        return math.inf
    loss = record.get("final_val_loss")
    return loss if loss is not None and math.isfinite(loss) else math.inf


def pick(screen: dict[float, list[float]]) -> tuple[float, str | None]:
    """(the LR with the lowest mean final loss, "low"/"high" if it is the grid's smallest/largest LR, else None)."""
    means = {lr: (sum(losses) / len(losses) if losses else math.inf) for lr, losses in screen.items()}
    best = min(sorted(means), key=means.get)  # ties: the smaller LR
    grid = sorted(screen)
    edge = "low" if best == grid[0] else "high" if best == grid[-1] else None
    return best, (edge if len(grid) > 1 else None)


def extend(grid: list[float], edge: str) -> float:
    """The next LR beyond `edge`, one step of the grid's outermost ratio on that side, to 6 significant digits (the
    value goes into a command line and a config dump: 0.0032, not 0.0031999999999999997)."""
    grid = sorted(grid)
    if len(grid) < 2:
        raise ValueError("extending a grid needs at least two LRs")
    if edge == "low":
        new = grid[0] * grid[0] / grid[1]
    elif edge == "high":
        new = grid[-1] * grid[-1] / grid[-2]
    else:
        raise ValueError(f"edge must be 'low' or 'high', got {edge!r}")
    return float(f"{new:.6g}")


def lr_label(lr: float) -> str:
    return f"{lr:.3g}"


class Sweep:
    def __init__(self, args, passthrough: list[str], log=print):
        self.args, self.passthrough, self.log = args, passthrough, log
        self.out = Path(args.out).resolve()  # the runs write here from the repository's root
        self.out.mkdir(parents=True, exist_ok=True)
        self.runs: list[dict] = []

    def run(self, stem: str, lr: float, seed: int, minutes: float) -> dict | None:
        path = self.out / f"{stem}.json"
        record = json.loads(path.read_text()) if path.exists() else None
        if record is not None and record.get("status") == "ok":
            self.log(f"kept {path} (final val loss {record.get('final_val_loss')})")
        else:
            if stem.startswith("screen"):
                self.check_screen_cpu()
            cmd = command(self.args.program, self.args.lr_key, lr, seed, minutes, self.out, stem, self.passthrough)
            rc = harness.run_logged(cmd, self.out / f"{stem}.out", self.log)
            record = harness.load_record(path, rc, stem)
        self.runs.append({"stem": stem, "lr": lr, "seed": seed, "minutes": minutes, "status": record.get("status"),
                          "final_val_loss": record.get("final_val_loss"), "tokens": record.get("tokens")})
        return record

    def check_screen_cpu(self) -> None:
        """A screen ranks final losses at a fixed clock, and a faster CPU trains more steps in it: before a screen run
        is made here, every kept screen run must come from this machine's kind of CPU. A finished screen is never
        checked, so the seed runs at its chosen LR may be added on any machine (compare_runs.py --paired pairs them
        by machine)."""
        here = provenance.this_cpu_id()
        for path in sorted(self.out.glob("screen_*.json")):
            record = json.loads(path.read_text())
            ran = provenance.recorded_cpu_id(record)
            if record.get("status") == "ok" and ran and here and ran != here:
                raise SystemExit(f"sweep.py: {path} ran on CPU {ran}, this machine is {here}: a screen's final "
                                 f"losses at a fixed clock depend on the CPU's speed. Finish the screen on that "
                                 f"CPU, or screen again here in a new --out")

    def final_runs(self, best: float) -> list[dict]:
        """Every seed run in the folder (earlier calls' too: calling the sweep once per seed for each recipe in
        turn interleaves recipes), each checked to be at the chosen LR and clock."""
        finals = []
        for path in sorted(self.out.glob("final_s*.json")):
            record = json.loads(path.read_text())
            config = record.get("config") or {}
            lr = config.get(self.args.lr_key)
            minutes = (60 * config["max_train_time_hours"] if "max_train_time_hours" in config
                       else config.get("budget_s", 0) / 60)
            if lr is None or not math.isclose(lr, best, rel_tol=1e-9) or not math.isclose(minutes, self.args.minutes,
                                                                                          rel_tol=1e-6):
                raise SystemExit(f"sweep.py: {path} ran at {self.args.lr_key} {lr} for {minutes:g} min, not at the "
                                 f"chosen {lr_label(best)} for {self.args.minutes:g} min: move it away first")
            # the record's name in the sweep's folder: sweep.json stays valid when the folder is kept or moved
            finals.append({"seed": config.get("seed"), "path": path.name, "final_val_loss": final_loss(record)})
        return finals

    def screen_point(self, lr: float) -> list[float]:
        return [final_loss(self.run(f"screen_lr{lr_label(lr)}_s{seed}", lr, seed, self.args.screen_minutes))
                for seed in self.args.screen_seeds]

    def screen_tokens(self, lr: float) -> list[int | None]:
        """Tokens each screen run of this LR trained in its clock: equal on a steady machine, not on a VM whose
        host slows down (a third, for minutes, measured), which the ranking by final loss cannot see."""
        return [r["tokens"] for r in self.runs if r["stem"].startswith("screen") and math.isclose(r["lr"], lr)]

    def main(self) -> dict:
        t0 = time.time()
        screen = {lr: self.screen_point(lr) for lr in sorted(self.args.lrs)}
        best, edge = pick(screen)
        for _ in range(self.args.max_extensions):
            if edge is None:
                break
            new = extend(list(screen), edge)
            self.log(f"best LR {lr_label(best)} is at the {edge} edge of the grid: screening {lr_label(new)}")
            screen[new] = self.screen_point(new)
            best, edge = pick(screen)
        if not math.isfinite(min(sum(v) / len(v) for v in screen.values())):
            raise SystemExit("sweep.py: every screened LR failed or diverged: see the .out files in " + str(self.out))
        for seed in self.args.seeds:
            self.run(f"final_s{seed}", best, seed, self.args.minutes)
        finals = self.final_runs(best)
        result = {"program": self.args.program, "lr_key": self.args.lr_key, "passthrough": self.passthrough,
                  "screen_minutes": self.args.screen_minutes, "minutes": self.args.minutes,
                  "screen": [{"lr": lr, "finals": losses, "mean": sum(losses) / len(losses),
                              "tokens": self.screen_tokens(lr)} for lr, losses in sorted(screen.items())],
                  "best_lr": best, "at_edge": edge,
                  "final": finals,
                  "runs": self.runs, "wall_time_s": time.time() - t0}
        harness.write_json(self.out / "sweep.json", result)
        self.log(report(result))
        return result


def report(result: dict) -> str:
    lines = [f"| {result['lr_key']} | screen final val loss ({result['screen_minutes']:g} min) | mean | "
             "tokens trained (M) |", "|---|---|---|---|"]
    for row in result["screen"]:
        mark = " **(chosen)**" if row["lr"] == result["best_lr"] else ""
        tokens = ", ".join("–" if n is None else f"{n / 1e6:.2f}" for n in row.get("tokens", []))
        lines.append(f"| {lr_label(row['lr'])}{mark} | {', '.join(f'{x:.4f}' for x in row['finals'])} | "
                     f"{row['mean']:.4f} | {tokens} |")
    counts = [n for row in result["screen"] for n in row.get("tokens", []) if n]
    if counts and max(counts) > 1.1 * min(counts):
        lines.append(f"the screen's runs trained {min(counts) / 1e6:.2f}M–{max(counts) / 1e6:.2f}M tokens in the "
                     f"same clock: the machine's speed varied by {max(counts) / min(counts) - 1:.0%}, so a ranking "
                     f"by a smaller loss difference than those tokens buy is not one")
    if result["at_edge"]:
        lines.append(f"the chosen LR is still at the {result['at_edge']} edge of the grid after the extensions")
    finals = ", ".join(f"s{r['seed']} {r['final_val_loss']:.4f}" for r in result["final"])
    lines.append(f"seeds at {lr_label(result['best_lr'])}, {result['minutes']:g} min: {finals}")
    return "\n".join(lines)


def main(argv=None) -> dict:
    own, passthrough = harness.split_at_separator(argv)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--program", choices=PROGRAMS, default="train")
    p.add_argument("--out", required=True, help="folder of the runs' records and sweep.json")
    p.add_argument("--lr_key", default="lr", help="the train.py key swept (lr, lr_hidden, lr_hidden_adamw, …)")
    p.add_argument("--lrs", type=float, nargs="+", required=True, help="the initial grid (>= 2 values)")
    p.add_argument("--screen_minutes", type=float, required=True, help="training clock of each screen run")
    p.add_argument("--screen_seeds", type=int, nargs="+", default=[1], help="seeds per screened LR")
    p.add_argument("--max_extensions", type=int, default=2, help="grid extensions when the best LR is at an edge")
    p.add_argument("--minutes", type=float, required=True, help="training clock of each seed run at the chosen LR")
    p.add_argument("--seeds", type=int, nargs="+", required=True, help="seeds of the runs at the chosen LR")
    args = p.parse_args(own)
    if len(set(args.lrs)) < 2 or min(args.lrs) <= 0:
        p.error("--lrs: at least two distinct positive LRs")
    if args.program == "hf_reference" and args.lr_key != "lr":
        p.error("--lr_key: hf_reference.py has one LR, --lr")
    given = harness.given_keys(passthrough)
    for flag in SET_BY_SWEEP[args.program] + (f"--{args.lr_key}",):
        if flag[2:] in given:
            p.error(f"{flag} after '--': the sweep sets it for each run")
    return Sweep(args, passthrough).main()


if __name__ == "__main__":
    main()
