"""One-knob ablations past the no-learning controls, with seeds, in paired blocks (issue 12, item 4).

    python benchmarks/ablation_blocks.py --out logs/sweeps/ablations --block 1 --minutes 10 -- \\
        --yaml_path example_yamls/cpu_track.yaml --lr_hidden 0.008
    python benchmarks/ablation_blocks.py --out logs/sweeps/ablations --report      # the tables, from the kept runs

Block N is the recipe (the train.py keys after `--`) and each of its one-knob variants (`ablations.ONE_KNOB`: the
recipe with exactly one idea switched off), every run with seed N and the same training clock, one after another,
one thread each (harness.run_logged), on one machine: a block is finished on the kind of CPU it began on (its times
compare only there), and the order of its runs rotates with N, so that no variant always runs last in a session.
Kept runs (a JSON record of a finished or diverged run whose config is the one this command would run) are not
rerun: a block cut short by the end of a session resumes. Before the first run, every variant's config goes through train.py's
parser: a variant the parser refuses under this recipe, or one that changes nothing (the recipe already has its
value), is refused, naming it (`--only` leaves variants out). train.py runs from the repository's root, so a YAML or
data path after `--` is read from there, as in every other command of docs/RESULTS.md.

The report reads every block in `--out` that holds the recipe's run and a variant's, and for each variant:
- final validation loss, variant − recipe within each block: the mean difference, its 95% t-interval and the
  paired t-test;
- the time ratio, variant / recipe, to each target of a ladder below the best control, within each block,
  summarised by the geometric mean with a 95% t-interval on the log-ratios (compare_runs.paired_speedup). Above 1:
  without the idea the recipe needs that factor more training clock (the idea helps). "k/n" when only k of the n
  blocks' runs reached the target (no ratio then: one over the blocks that made it would flatter);
- the same ratio in tokens seen (learning per token: the machine's speed cancels), and the variant's tokens/s
  over the recipe's.
It writes `{out}/ablations.json` and `.md`, and `gain_curves.png` (compare_runs.plot_gain: every run's gain below
the best control against training clock).

Muon is not in the list: its ablation moves the hidden matrices to Adam, which needs Adam's own LR swept
(benchmarks/sweep.py --lr_key lr_hidden_adamw, then seeds; docs/RESULTS.md, "The isolated Muon ablation").
"""
import argparse
import contextlib
import json
import math
import re
import sys
from pathlib import Path

import numpy as np
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ablations  # noqa: E402
import compare_runs  # noqa: E402
import harness  # noqa: E402  (also puts the repository root on sys.path)
import provenance  # noqa: E402
from records import mean_interval  # noqa: E402

RECIPE = "recipe"
SET_HERE = ("--seed", "--max_train_time_hours", "--log_dir", "--log_name", "--save_dir")
NOT_THE_RECIPE = {"seed", "log_name", "log_dir", "save_dir"}  # config keys that differ between runs of one recipe
FINISHED = ("ok", "nan")  # kept, not rerun: a finished run, or one that diverged (a result: the idea kept it stable)


def fail(message: str):
    raise SystemExit(f"ablation_blocks.py: {message}")


def chosen_variants(only: list[str] | None) -> dict[str, tuple[str, dict]]:
    if only is None:
        return dict(ablations.ONE_KNOB)
    unknown = [v for v in only if v not in ablations.ONE_KNOB]
    if unknown:
        fail(f"--only {' '.join(unknown)}: not a variant; the variants are {', '.join(ablations.ONE_KNOB)}")
    return {v: ablations.ONE_KNOB[v] for v in only}


def the_recipe(config: dict) -> dict:
    return {k: v for k, v in config.items() if k not in NOT_THE_RECIPE}


def differing(a: dict, b: dict) -> list[str]:
    """The keys whose values differ between two configs (a key missing from one counts)."""
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))


class Block:
    """One block: the recipe and each chosen variant with seed `block`, `minutes` of training clock each."""

    def __init__(self, out: Path, block: int, minutes: float, passthrough: list[str], variants: dict, log=print):
        self.out, self.block, self.minutes, self.passthrough, self.log = out, block, minutes, passthrough, log
        self.keys = {RECIPE: {}} | {vid: keys for vid, (_, keys) in variants.items()}
        self.expected = self.check(variants)

    def args(self, vid: str) -> list[str]:
        """train.py's keys for one run of the block (the recipe's, the variant's, the seed and the clock)."""
        return [*self.passthrough, *harness.cli_args(self.keys[vid]), "--seed", str(self.block),
                "--max_train_time_hours", str(self.minutes / 60)]

    def check(self, variants: dict) -> dict[str, dict]:
        """Every run's config, parsed by train.py before anything runs; refuses what would make the block lie: keys
        this script sets or a variant's key given after '--', a variant train.py refuses, one that changes nothing."""
        import train
        from config import ConfigError
        given = harness.given_keys(self.passthrough)
        for flag in SET_HERE:
            if flag[2:] in given:
                fail(f"{flag} after '--': the block sets it for each run")
        for vid, keys in self.keys.items():
            for key in sorted(given & set(keys)):
                fail(f"--{key} after '--': the variant {vid} sets it (leave the variant out with --only)")
        expected = {}
        for vid in self.keys:
            try:
                with contextlib.chdir(harness.ROOT):  # where the run will read its YAML and data from
                    expected[vid] = the_recipe(train.parse_config(self.args(vid))[0].flat())
            except ConfigError as e:
                fail(f"the recipe: {e}" if vid == RECIPE else f"the variant {vid} ({variants[vid][0]}): {e}")
        for vid in variants:
            if expected[vid] == expected[RECIPE]:
                fail(f"the variant {vid} ({variants[vid][0]}) changes nothing: the recipe already has "
                     + ", ".join(f"{k} {v}" for k, v in self.keys[vid].items()) + " (leave it out with --only)")
        return expected

    def path(self, vid: str) -> Path:
        return self.out / f"{vid}_s{self.block}.json"

    def kept(self, vid: str) -> dict | None:
        """The kept record of a run, if it finished or diverged (FINISHED) with the config this block would run;
        a run that crashed or was interrupted is run again."""
        path = self.path(vid)
        record = json.loads(path.read_text()) if path.exists() else None
        if record is None or record.get("status") not in FINISHED:
            return None
        ran = the_recipe(record.get("config") or {})
        if ran != self.expected[vid]:
            want = self.expected[vid]
            differ = ", ".join(f"{k}: {ran.get(k)!r}, not {want.get(k)!r}" for k in differing(ran, want))
            fail(f"{path} ran with another config ({differ}): move it away, or give the command it ran with")
        return record

    def order(self) -> list[str]:
        """The recipe and its variants, rotated by the block's number: no run is always the session's last."""
        ids = list(self.keys)
        k = (self.block - 1) % len(ids)
        return ids[k:] + ids[:k]

    def run(self) -> None:
        here = provenance.this_cpu_id()
        for vid in self.keys:
            record = self.kept(vid)
            ran = provenance.recorded_cpu_id(record) if record else None
            if ran and here and ran != here:
                fail(f"{self.path(vid)} ran on CPU {ran}, this machine is {here}: the times of one block compare "
                     f"only on one machine. Finish block {self.block} on that CPU, or run another block here")
        for vid in self.order():
            stem = self.path(vid).stem
            if self.kept(vid) is not None:
                self.log(f"kept {self.path(vid)}")
                continue
            rc = harness.run_logged(harness.train_py(self.args(vid), self.out, stem), self.out / f"{stem}.out",
                                    self.log)
            record = harness.load_record(self.path(vid), rc, stem)
            self.log(f"{stem}: {record.get('status')}, final val loss {record.get('final_val_loss')}")


# ---------------------------------------------------------------- the report
def kept_blocks(out: Path) -> dict[int, dict[str, dict]]:
    """{block: {run id: record}} of every `{id}_s{block}.json` in `out`."""
    blocks: dict[int, dict[str, dict]] = {}
    for path in sorted(out.glob("*_s*.json")):
        match = re.fullmatch(r"(.+)_s(\d+)", path.stem)
        if match and (match[1] == RECIPE or match[1] in ablations.ONE_KNOB):
            blocks.setdefault(int(match[2]), {})[match[1]] = json.loads(path.read_text()) | {"path": str(path)}
    return blocks


def check_recipes(blocks: dict[int, dict[str, dict]]) -> None:
    """One recipe in every block, and each variant differing from its block's recipe only in its own keys."""
    recipes = {b: the_recipe(runs[RECIPE].get("config") or {}) for b, runs in blocks.items() if RECIPE in runs}
    if not recipes:
        fail("no block has the recipe's run (recipe_sN.json)")
    first = min(recipes)
    for b, config in recipes.items():
        if config != recipes[first]:
            fail(f"block {b}'s recipe differs from block {first}'s in {', '.join(differing(config, recipes[first]))}: "
                 f"not one recipe")
    for b, runs in blocks.items():
        for vid, record in runs.items():
            if vid == RECIPE or b not in recipes:
                continue
            config = the_recipe(record.get("config") or {})
            differ = differing(config, recipes[b])
            if not differ or not set(differ) <= set(ablations.ONE_KNOB[vid][1]):
                fail(f"{record['path']} differs from its block's recipe in {differ or 'nothing'}, not in the "
                     f"variant's keys {sorted(ablations.ONE_KNOB[vid][1])}")


def inverse(paired: dict) -> dict:
    """compare_runs' paired speedup (recipe time / variant time) turned into the ablation's ratio, variant / recipe."""
    return {"ratios": [1 / r for r in paired["ratios"]], "geometric_mean": 1 / paired["geometric_mean"],
            "interval": None if paired["interval"] is None else (1 / paired["interval"][1], 1 / paired["interval"][0]),
            "p": paired["p"], "blocks": paired["blocks"]}


def ladder(rows: list[dict], vid: str) -> list[dict]:
    out = []
    for row in rows:
        entry, base = row["groups"][vid], row["groups"][RECIPE]
        cell = {"target": row["target"], "below_best_control": row["below_best_control"],
                "reached": {RECIPE: base["reached"], vid: entry["reached"]}, "n": entry["n"]}
        if "paired" in entry:
            cell["ratio"] = inverse(entry["paired"])
        out.append(cell)
    return out


def variant_result(pairs: list[tuple[int, dict, dict]], vid: str, deltas: list[float]) -> dict:
    """One variant against the recipe over the blocks that ran both (`pairs`: block, recipe run, variant run)."""
    groups = {RECIPE: [r for _, r, _ in pairs], vid: [v for _, _, v in pairs]}
    compared = compare_runs.compare(groups, deltas, paired=True)
    recipe_final = [r["val"][-1]["loss"] for _, r, _ in pairs]
    variant_final = [v["val"][-1]["loss"] for _, _, v in pairs]
    diffs = [v - r for r, v in zip(recipe_final, variant_final)]
    final = {"recipe": recipe_final, "variant": variant_final, "differences": diffs,
             "difference": mean_interval(diffs) if len(diffs) > 1 else {"mean": diffs[0]},
             "p": float(stats.ttest_rel(variant_final, recipe_final).pvalue) if len(diffs) > 1 else None}
    throughput = [v["tokens_per_s"] / r["tokens_per_s"] for _, r, v in pairs]
    return {"label": ablations.ONE_KNOB[vid][0], "keys": ablations.ONE_KNOB[vid][1], "blocks": [b for b, _, _ in pairs],
            "final": final, "time": ladder(compared["targets"], vid),
            "tokens": ladder(compared["targets_by_tokens"], vid),
            "tokens_per_s_ratio": float(np.mean(throughput)), "controls": compared["controls"],
            "machines": compared["machines"]}


def report(out: Path, deltas: list[float], plot: bool = True) -> dict:
    blocks = kept_blocks(out)
    if not blocks:
        fail(f"no runs in {out}")
    check_recipes(blocks)
    result = {"blocks": sorted(blocks), "variants": {}, "failed": [],
              "cpu_of_block": {b: provenance.recorded_cpu_id(runs[RECIPE]) for b, runs in sorted(blocks.items())
                               if RECIPE in runs}}
    plotted: dict[str, list[dict]] = {}
    for vid in ablations.ONE_KNOB:
        pairs = []
        for b in sorted(blocks):
            recipe, variant = blocks[b].get(RECIPE), blocks[b].get(vid)
            if recipe is None or variant is None:
                continue
            bad = [f"{r['path']}: status {r.get('status')!r}" for r in (recipe, variant) if r.get("status") != "ok"]
            if bad:
                result["failed"] += bad
                continue
            pairs.append((b, *compare_runs.load_group([recipe["path"], variant["path"]])))
        if pairs:
            result["variants"][vid] = variant_result(pairs, vid, deltas)
            plotted[ablations.ONE_KNOB[vid][0]] = [v for _, _, v in pairs]
    recipe_runs = [compare_runs.load_group([runs[RECIPE]["path"]])[0] for _, runs in sorted(blocks.items())
                   if RECIPE in runs and runs[RECIPE].get("status") == "ok"]
    if recipe_runs:
        finals = [r["val"][-1]["loss"] for r in recipe_runs]
        result["recipe"] = {"final": mean_interval(finals) if len(finals) > 1 else {"mean": finals[0]},
                            "runs": [r["path"] for r in recipe_runs]}
    result["failed"] = sorted(set(result["failed"]))
    text = tables(result, deltas)
    harness.write_json(out / "ablations.json", result)
    (out / "ablations.md").write_text(text + "\n")
    if plot and recipe_runs and plotted:
        groups = {"recipe": recipe_runs} | plotted
        compare_runs.plot_gain(groups, compare_runs.check_same_validation(groups), deltas, out / "gain_curves.png")
    return result | {"text": text}


def ratio_cell(cell: dict) -> str:
    if "ratio" not in cell:
        recipe, variant = cell["reached"].values()
        return f"{recipe}/{cell['n']} → {variant}/{cell['n']} reached"
    r = cell["ratio"]
    text = f"{r['geometric_mean']:.2f}×"
    if r["interval"]:
        text += f" [{r['interval'][0]:.2f}, {r['interval'][1]:.2f}], p = {r['p']:.2g}"
    return text + " (" + ", ".join(f"{x:.2f}" for x in r["ratios"]) + ")"


def tables(result: dict, deltas: list[float]) -> str:
    heads = ["the best control" if d == 0 else f"−{d:g}" for d in deltas]
    first = next(iter(result["variants"].values()), None)
    lines = []
    if first:
        c = first["controls"]
        lines.append(f"best control: {c['best_name']} {c['best']:.4f} nats per masked token; blocks "
                     f"{', '.join(map(str, result['blocks']))}")
    if result.get("cpu_of_block"):  # a block's times compare only on its own CPU; ratios within blocks do compare
        lines.append("CPU of each block: " + "; ".join(f"{b}: {cpu or 'not recorded'}"
                                                      for b, cpu in result["cpu_of_block"].items()))
    if "recipe" in result:
        f = result["recipe"]["final"]
        lines.append(f"the recipe's final validation loss: {f['mean']:.4f}"
                     + (f" [{f['low']:.4f}, {f['high']:.4f}] over {f['n']} blocks" if "low" in f else " (1 block)"))
    for key, title in (("time", "Training clock to each target, variant / recipe within each block (> 1: the idea "
                                "helps); 'a/n → b/n': blocks whose recipe / variant run reached it"),
                       ("tokens", "Tokens seen to each target, variant / recipe (learning per token)")):
        lines += ["", title + ":", "", "| variant | blocks | final val loss, variant − recipe | " + " | ".join(heads)
                  + " | tokens/s, variant / recipe |", "|---|---|---|" + "---|" * len(heads) + "---|"]
        for vid, v in result["variants"].items():
            d = v["final"]["difference"]
            final = f"{d['mean']:+.4f}" + (f" [{d['low']:+.4f}, {d['high']:+.4f}], p = {v['final']['p']:.2g}"
                                           if "low" in d else "")
            lines.append(f"| {v['label']} (`{vid}`) | {len(v['blocks'])} | {final} | "
                         + " | ".join(ratio_cell(cell) for cell in v[key]) + f" | {v['tokens_per_s_ratio']:.2f} |")
    for failed in result["failed"]:
        lines.append(f"not compared: {failed}")
    return "\n".join(lines)


def main(argv=None) -> dict:
    own, passthrough = harness.split_at_separator(argv)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder of the blocks' runs and of the report")
    p.add_argument("--block", type=int, help="run block N: every run with seed N")
    p.add_argument("--minutes", type=float, help="training clock of each run of the block")
    p.add_argument("--only", nargs="+", help=f"variants to run (default all: {', '.join(ablations.ONE_KNOB)})")
    p.add_argument("--report", action="store_true", help="only the report, from the kept runs")
    p.add_argument("--ladder", default="0,0.005,0.01,0.015,0.02",
                   help="comma-separated nats below the best control: the report's targets")
    args = p.parse_args(own)
    deltas = [float(x) for x in args.ladder.split(",")]
    if not all(d >= 0 and math.isfinite(d) for d in deltas):
        p.error("--ladder: every step must be a number of nats >= 0")
    out = Path(args.out).resolve()  # train.py runs from the repository's root
    if args.report:
        if args.block is not None or args.minutes is not None or args.only or passthrough:
            p.error("--report reads the kept runs: --block, --minutes, --only and train.py keys do not apply")
    else:
        if args.block is None or args.block < 1 or args.minutes is None or args.minutes <= 0:
            p.error("give --block N (>= 1) and --minutes M (> 0), or --report")
        out.mkdir(parents=True, exist_ok=True)
        Block(out, args.block, args.minutes, passthrough, chosen_variants(args.only)).run()
    result = report(out, deltas)
    print(result["text"])
    return result


if __name__ == "__main__":
    main()
