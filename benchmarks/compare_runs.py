"""Compare groups of train.py runs (one group per recipe, one run per seed) at targets past the no-learning controls.

    python benchmarks/compare_runs.py --group speedrun logs/cpu_track_s{1,2,3}.json \
                                      --group esm2 logs/cpu_track_esm2_s{1,2,3}.json [--ladder 0.005,0.01,0.02]

Every run must have been validated on the same masks (the same controls and masked-token count in its JSON: the
command refuses otherwise, naming the run). The targets are a ladder below the best control (`controls.best`), so
no target is read off one recipe's own curve. For each group and target:
- time to target: training clock at the first validation at or below it (harness.time_to_loss: linear
  interpolation between validations), mean and 95% t-interval over the group's runs; "k/n" when only k runs got
  there (no mean is then reported: a mean over the runs that made it would flatter the group);
- speedup of each group over the first (the baseline) at that target: ratio of mean times, with a 95% bootstrap
  interval (runs resampled with replacement within each group, 10,000 draws, fixed seed; none with < 2 runs) and
  Welch's t-test of the group's times against the baseline's (is the difference in time more than seed noise?).
  When no baseline run reached the target but every run of the group did, a lower bound instead: the shortest
  training clock of the baseline's runs (each trained that long without reaching it) over the group's mean time.
The same ladder again in tokens seen instead of training clock: learning per token, in which the machine's speed
cancels (a slower host gives fewer tokens in the same clock, not a different curve per token), though not entirely,
since the LR schedule follows the clock. Read the two together: time = tokens / throughput.
And over the whole run: final validation loss, mean and t-interval, with Welch's t-test against the baseline.

Times measured on different CPUs do not compare (two generations behind one model name trained 1.5x apart), so
every run's CPU id (provenance.cpu_id) is listed and a comparison that spans several is flagged. `--paired` is
the design for that: run i of every group forms block i, one machine and one session each (the command refuses a
block whose recorded CPU ids differ), and the speedup is read within blocks: per block the ratio of times, their
geometric mean with a 95% t-interval on the log-ratios, and the paired t-test of the log-times. A machine's speed
then cancels in each ratio. Every group needs the same number of runs.
Then, per group, what a step trained on (tokens and supervised = masked tokens per optimiser step, the training
corruption) and the machine columns (tokens/s, the slowest and fastest tokens/s between two validations, CPU/wall,
1-minute load before the run): read them before trusting a time, since a contended run is slower and a recipe that
supervises more tokens per step is not a like-for-like comparison. On a VM the host can slow a one-thread run by
a third for minutes while CPU/wall stays 1.00 and the load at 1: only the within-run throughput shows it.
`--plot FILE` draws the learning curve of the gap: gain below the best control against training clock, one colour
per group and one line per run, with the other controls and the ladder's targets as horizontal lines.
"""
import argparse
import collections
import json
import math
import sys
from pathlib import Path

import numpy as np
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402  (also puts the repository root on sys.path)
import provenance  # noqa: E402
from records import mean_interval  # noqa: E402

BOOTSTRAP_DRAWS = 10_000


def load_group(paths: list[str]) -> list[dict]:
    runs = []
    for path in paths:
        summary = json.loads(Path(path).read_text())
        if summary.get("status") != "ok" or not summary.get("val"):
            raise SystemExit(f"compare_runs.py: {path}: status {summary.get('status')!r}, not a finished run")
        if not summary.get("controls"):
            raise SystemExit(f"compare_runs.py: {path}: no controls in the summary (run with controls: true)")
        runs.append(summary | {"path": str(path)})
    return runs


def same_controls(a: dict, b: dict) -> bool:
    """Equal up to summation order: train.py scores the validation set in packed rows, hf_reference.py one sequence
    per row, so the same sums can differ in the last bits (1e-15); other masks or sequences move them by far more."""
    return (a["masked_tokens"] == b["masked_tokens"] and a["best_name"] == b["best_name"] and set(a) == set(b)
            and all(math.isclose(a[k], b[k], rel_tol=0, abs_tol=1e-9) for k in a
                    if k not in ("masked_tokens", "best_name")))


def check_same_validation(groups: dict[str, list[dict]]) -> dict:
    """The controls every run was scored beside; refuses runs validated on other masks or other sequences."""
    first = next(iter(groups.values()))[0]
    for runs in groups.values():
        for run in runs:
            if not same_controls(run["controls"], first["controls"]):
                raise SystemExit(f"compare_runs.py: {run['path']} was validated on other masks or sequences than "
                                 f"{first['path']} (their controls differ): the losses do not compare")
    return first["controls"]


def bootstrap_speedup(base: list[float], other: list[float], seed: int = 0) -> tuple[float, float]:
    """95% interval of mean(base) / mean(other), resampling runs within each group."""
    rng = np.random.default_rng(seed)
    b = rng.choice(base, size=(BOOTSTRAP_DRAWS, len(base))).mean(axis=1)
    o = rng.choice(other, size=(BOOTSTRAP_DRAWS, len(other))).mean(axis=1)
    low, high = np.quantile(b / o, [0.025, 0.975])
    return float(low), float(high)


NOT_RECORDED = "not recorded"


def cpu_of(run: dict) -> str:
    """The run's CPU id (provenance.cpu_id); runs made before it was recorded say so."""
    return provenance.recorded_cpu_id(run) or NOT_RECORDED


def check_blocks(groups: dict[str, list[dict]]) -> None:
    """--paired: the same number of runs in every group, and no block whose recorded CPU ids differ."""
    counts = {name: len(runs) for name, runs in groups.items()}
    if len(set(counts.values())) != 1:
        raise SystemExit(f"compare_runs.py --paired: every group needs the same number of runs (block i = run i of "
                         f"each group): {counts}")
    for i, block in enumerate(zip(*groups.values())):
        known = {cpu_of(run) for run in block} - {NOT_RECORDED}
        if len(known) > 1:
            raise SystemExit(f"compare_runs.py --paired: block {i + 1} ({', '.join(r['path'] for r in block)}) "
                             f"ran on different CPUs ({'; '.join(sorted(known))}): its times do not compare")


def paired_speedup(base: list[float], other: list[float]) -> dict:
    """Within-block ratios base/other, their geometric mean, a 95% t-interval on the log-ratios and the paired t-test
    of the log-times (no interval or test with < 2 blocks)."""
    logs = np.log(np.asarray(base)) - np.log(np.asarray(other))
    out = {"ratios": [float(x) for x in np.exp(logs)], "geometric_mean": float(np.exp(logs.mean())),
           "blocks": len(logs), "interval": None, "p": None}
    if len(logs) > 1:
        half = stats.t.ppf(0.975, len(logs) - 1) * logs.std(ddof=1) / math.sqrt(len(logs))
        out["interval"] = (float(np.exp(logs.mean() - half)), float(np.exp(logs.mean() + half)))
        out["p"] = float(stats.ttest_rel(np.log(base), np.log(other)).pvalue)
    return out


def throughput_range(run: dict) -> tuple[float, float] | None:
    """The slowest and fastest tokens/s between two consecutive validations of a run: a host that slows down under
    a one-thread run (a neighbour on the hypervisor) shows here, not in CPU/wall or the load average."""
    points = sorted((v["train_time_s"], v["tokens"]) for v in run["val"])
    rates = [(n1 - n0) / (t1 - t0) for (t0, n0), (t1, n1) in zip(points, points[1:]) if t1 > t0]
    return (min(rates), max(rates)) if rates else None


def run_setup(run: dict) -> dict:
    """What a run trained on per optimiser step, and how its machine behaved: the fairness columns."""
    config, loader, machine = run["config"], run.get("loader") or {}, run.get("provenance", {}).get("machine") or {}
    steps, world = max(run["steps"], 1), run.get("world_size", 1)
    return {"params": run.get("n_params"), "steps": run["steps"], "tokens_per_step": run["tokens"] / steps,
            # the loader counts what rank 0 loaded; every rank loads the same amount
            "masked_tokens_per_step": loader["masked_tokens"] * world / steps if "masked_tokens" in loader else None,
            "mask_rate": config.get("mask_rate"),
            "corruption": "80/10/10" if config.get("bert_corruption") else "all <mask>",
            "tokens_per_s": run.get("tokens_per_s"), "tokens_per_s_range": throughput_range(run),
            "cpu_per_wall": machine.get("cpu_per_wall"),
            "load_before": (machine.get("loadavg_before") or [None])[0], "cpu_id": cpu_of(run)}


def ladder_row(groups: dict[str, list[dict]], target: float, delta: float, key: str, paired: bool) -> dict:
    """One target of the ladder: per group what it took to get there (`key`: "train_time_s", the training clock, or
    "tokens", the tokens seen), and each group's speedup over the first group."""
    names, baseline = list(groups), next(iter(groups))
    row = {"target": target, "below_best_control": delta, "groups": {}}
    amounts = {}
    for name in names:
        reached = [harness.time_to_loss(run["val"], target, key=key) for run in groups[name]]
        entry = {"reached": sum(t is not None for t in reached), "n": len(reached), "values": reached}
        if all(t is not None for t in reached):
            amounts[name] = reached
            entry["mean"] = mean_interval(reached) if len(reached) > 1 else {"mean": reached[0]}
        row["groups"][name] = entry
    for name in names[1:]:
        entry = row["groups"][name]
        if baseline in amounts and name in amounts:
            base, other = amounts[baseline], amounts[name]
            enough = min(len(base), len(other)) >= 2  # an interval needs spread on both sides
            entry["speedup"] = {"mean": float(np.mean(base) / np.mean(other)),
                                "interval": bootstrap_speedup(base, other) if enough else None}
            if enough:
                welch = stats.ttest_ind(other, base, equal_var=False)
                entry["welch_vs_baseline"] = {"t": float(welch.statistic), "p": float(welch.pvalue)}
            if paired:
                entry["paired"] = paired_speedup(base, other)
        elif row["groups"][baseline]["reached"] == 0 and name in amounts:
            # the baseline never got there: every baseline run trained at least its final validation's clock (or
            # tokens) without reaching the target, so the speedup is at least that over the group's mean
            budget = min(run["val"][-1][key] for run in groups[baseline])
            entry["speedup_at_least"] = float(budget / np.mean(amounts[name]))
    return row


def compare(groups: dict[str, list[dict]], deltas: list[float], paired: bool = False) -> dict:
    controls = check_same_validation(groups)
    if paired:
        check_blocks(groups)
    names = list(groups)
    baseline = names[0]
    targets = [round(controls["best"] - delta, 6) for delta in deltas]
    machines = dict(collections.Counter(cpu_of(run) for runs in groups.values() for run in runs))
    warnings = [] if len(machines) == 1 else [
        "the runs come from several CPUs (" + "; ".join(f"{cpu}: {n} runs" for cpu, n in machines.items())
        + "): a time measured on one does not compare with a time measured on another"
        + ("; the paired speedups compare within blocks" if paired else "; compare within one CPU, or --paired")]
    out = {"controls": controls, "baseline": baseline, "paired": paired, "machines": machines, "warnings": warnings,
           "final": {},
           "setup": {name: [run_setup(run) for run in runs] for name, runs in groups.items()}}
    for field, key in (("targets", "train_time_s"), ("targets_by_tokens", "tokens")):
        out[field] = [ladder_row(groups, target, delta, key, paired) for target, delta in zip(targets, deltas)]
    base_final = [run["val"][-1]["loss"] for run in groups[baseline]]
    for name in names:
        finals = [run["val"][-1]["loss"] for run in groups[name]]
        entry = {"loss": mean_interval(finals) if len(finals) > 1 else {"mean": finals[0]},
                 "gain": controls["best"] - float(np.mean(finals)),
                 "machine": [run.get("provenance", {}).get("machine") for run in groups[name]]}
        if name != baseline and len(finals) > 1 and len(base_final) > 1:
            welch = stats.ttest_ind(finals, base_final, equal_var=False)
            entry["welch_vs_baseline"] = {"t": float(welch.statistic), "p": float(welch.pvalue)}
        out["final"][name] = entry
    return out


def ladder_table(rows: list[dict], title: str, fmt, unit: str) -> list[str]:
    """The ladder as a markdown table: per target and group the mean (fmt, then unit) with its interval, the speedup
    over the baseline with its interval and Welch p, the paired speedup, or the lower bound."""
    names = list(rows[0]["groups"]) if rows else []
    lines = ["", f"{title}:", "", "| target (below best control) | " + " | ".join(names) + " |",
             "|---|" + "---|" * len(names)]
    for row in rows:
        cells = []
        for name, entry in row["groups"].items():
            if "mean" not in entry:
                cells.append(f"{entry['reached']}/{entry['n']} reached")
                continue
            t = entry["mean"]
            cell = fmt(t["mean"]) + unit + (f" [{fmt(t['low'])}, {fmt(t['high'])}]" if "low" in t else "")
            if "speedup" in entry:
                s = entry["speedup"]
                cell += f"; {s['mean']:.2f}×" + (f" [{s['interval'][0]:.2f}, {s['interval'][1]:.2f}]"
                                                 if s["interval"] else " (no interval: < 2 runs)")
            if "welch_vs_baseline" in entry:
                cell += f", Welch p = {entry['welch_vs_baseline']['p']:.2g}"
            if "paired" in entry:
                pr = entry["paired"]
                cell += (f"; paired {pr['geometric_mean']:.2f}×" + (
                    f" [{pr['interval'][0]:.2f}, {pr['interval'][1]:.2f}], p = {pr['p']:.2g}" if pr["interval"] else "")
                    + f" ({pr['blocks']} block{'s' if pr['blocks'] != 1 else ''}: " + ", ".join(f"{r:.2f}" for r in pr["ratios"]) + ")")
            if "speedup_at_least" in entry:
                cell += f"; > {entry['speedup_at_least']:.2f}× (the baseline never reached it)"
            cells.append(cell)
        delta = row["below_best_control"]
        label = "the best control" if delta == 0 else f"−{delta:g}"
        lines.append(f"| {row['target']:.4f} ({label}) | " + " | ".join(cells) + " |")
    return lines


def report(result: dict) -> str:
    c = result["controls"]
    lines = [f"best control: {c['best_name']} {c['best']:.4f} nats per masked token ({c['masked_tokens']:,} masked "
             f"tokens); baseline: {result['baseline']}" + ("; paired: run i of each group is block i"
                                                           if result["paired"] else "")]
    lines += [f"WARNING: {w}" for w in result["warnings"]]
    lines += ladder_table(result["targets"], "Training clock to the target", lambda t: f"{t:,.0f}", " s")
    lines += ladder_table(result["targets_by_tokens"], "Tokens seen to the target (learning per token: the machine's "
                          "speed cancels, though the LR schedule follows the clock)", lambda t: f"{t / 1e6:.2f}", "M")
    lines += ["", "| final validation loss | " + " | ".join(
        f"{name}: {e['loss']['mean']:.4f}" + (f" [{e['loss']['low']:.4f}, {e['loss']['high']:.4f}]"
                                             if "low" in e["loss"] else "")
        + f", gain {e['gain']:+.4f}" + (f", Welch p = {e['welch_vs_baseline']['p']:.2g}"
                                         if "welch_vs_baseline" in e else "")
        for name, e in result["final"].items()) + " |"]
    lines += ["", "| group | params | steps | tokens/step | masked tokens/step | training corruption | tokens/s | "
              "tokens/s between validations | CPU/wall | load before | CPU id |", "|---|" + "---|" * 10]
    for name, setups in result["setup"].items():
        def span(key, fmt):
            values = [s[key] for s in setups if s[key] is not None]
            if not values:
                return "–"
            low, high = min(values), max(values)
            return format(low, fmt) if format(low, fmt) == format(high, fmt) else f"{low:{fmt}}–{high:{fmt}}"
        ranges = [s["tokens_per_s_range"] for s in setups if s["tokens_per_s_range"]]
        within = f"{min(r[0] for r in ranges):,.0f}–{max(r[1] for r in ranges):,.0f}" if ranges else "–"
        corruption = sorted({f"{s['corruption']}, rate {s['mask_rate']}" for s in setups})
        lines.append(f"| {name} | {span('params', ',')} | {span('steps', ',')} | {span('tokens_per_step', ',.0f')} | "
                     f"{span('masked_tokens_per_step', ',.0f')} | {'; '.join(corruption)} | "
                     f"{span('tokens_per_s', ',.0f')} | {within} | {span('cpu_per_wall', '.2f')} | "
                     f"{span('load_before', '.2f')} | "
                     + "; ".join(dict.fromkeys(s["cpu_id"] for s in setups)) + " |")
    lines.append("(validation always scores the fixed 15% masks, every chosen residue replaced by <mask>)")
    return "\n".join(lines)


def gain_curves(groups: dict[str, list[dict]], controls: dict) -> dict[str, list[list[tuple[float, float]]]]:
    """Per group, per run: (training clock in minutes, best control − validation loss) at every validation."""
    return {name: [[(v["train_time_s"] / 60, controls["best"] - v["loss"]) for v in run["val"]] for run in runs]
            for name, runs in groups.items()}


def gain_ylim(curves: dict, controls: dict) -> tuple[float, float]:
    """Zoom on the learning: from the unigram control's level (or the lowest gain after step 0, if higher) to just
    above the best gain. The untrained validation at clock 0 (gain ≈ −0.7) stays out of the frame; a run without
    one (resumed) keeps all its points."""
    later = [g for runs in curves.values() for points in runs for minutes, g in points
             if minutes > 0 and math.isfinite(g)]
    top = max(later + [0.0])
    bottom = max(min(later + [0.0]), controls["best"] - controls["unigram"])
    pad = 0.05 * (top - bottom) + 1e-3
    return bottom - pad, top + pad


def plot_gain(groups: dict[str, list[dict]], controls: dict, deltas: list[float], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    curves = gain_curves(groups, controls)
    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=110)
    for i, (name, runs) in enumerate(curves.items()):
        color = f"C{i}"
        for k, points in enumerate(runs):
            ax.plot(*zip(*points), "o-", ms=2.5, lw=1.1, color=color, alpha=0.85,
                    label=f"{name} ({len(runs)} run{'s' if len(runs) > 1 else ''})" if k == 0 else None)
    low, high = gain_ylim(curves, controls)
    ax.axhline(0, color="k", lw=1.2, label=f"best control: {controls['best_name']} {controls['best']:.4f}")
    for j, key in enumerate(c for c in ("unigram", "composition", "ngram") if c in controls):
        level = controls["best"] - controls[key]
        ax.axhline(level, color="gray", lw=1, ls=("--", "-.", ":")[j],
                   label=f"{key} {controls[key]:.4f}" + (" (below the frame)" if level < low else ""))
    for delta in (d for d in deltas if d > 0):
        ax.axhline(delta, color="tab:red", lw=0.7, ls=":", alpha=0.6)
    ax.set_ylim(low, high)
    ax.set_xlabel("training clock (min, validation excluded)")
    ax.set_ylabel("gain below the best control (nats per masked token)")
    ax.set_title("learning beyond the no-learning controls (dotted red: the ladder's targets)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--group", nargs="+", action="append", required=True, metavar=("NAME", "RUN_JSON"),
                        help="a group name, then its runs' JSON summaries; the first group is the baseline")
    parser.add_argument("--ladder", default="0.005,0.01,0.015,0.02",
                        help="comma-separated nats below the best control: the targets (0 = the control itself, "
                             "where learning beyond composition begins)")
    parser.add_argument("--output", help="write the comparison as JSON here, and the printed tables beside it (.md)")
    parser.add_argument("--plot", help="draw the gain below the best control against training clock here (PNG)")
    parser.add_argument("--paired", action="store_true",
                        help="run i of every group is block i (one machine, one session): speedups within blocks")
    args = parser.parse_args(argv)
    groups = {}
    for name, *paths in args.group:
        if not paths or name in groups:
            parser.error(f"--group {name}: needs a new name and at least one run JSON")
        groups[name] = load_group(paths)
    deltas = [float(x) for x in args.ladder.split(",")]
    if not all(d >= 0 and math.isfinite(d) for d in deltas):
        parser.error("--ladder: every step must be a number of nats >= 0 (0: the best control itself)")
    result = compare(groups, deltas, args.paired)
    tables = report(result)
    print(tables)
    if args.output:
        harness.write_json(Path(args.output), result)
        Path(args.output).with_suffix(".md").write_text(tables + "\n")
    if args.plot:
        plot_gain(groups, result["controls"], deltas, Path(args.plot))
    return 0


if __name__ == "__main__":
    sys.exit(main())
