"""Ablations: the speedrun recipe with one idea switched off at a time, same data, same training-time budget.

    python benchmarks/ablations.py --budget_minutes 1.25       # the numbers in docs/RESULTS.md (~25 min)
    python benchmarks/ablations.py --smoke                     # ~1 min: two seeds and one ablation, tiny

The base is the speedrun recipe of speedrun_vs_esm2.py at the same size and batch. Each variant changes one thing
(train.py keys in VARIANTS below). The full recipe runs with several seeds; their spread is the noise floor.

The effect of an ablation is its time-to-loss ratio against the full recipe (seed 0):
    L* = the worse of the two final validation losses (both runs reach it);
    ratio = (time the ablated run needs to reach L*) / (time the full recipe needs to reach L*),
read off the validation curves by linear interpolation in time (harness.time_to_loss). ratio > 1: switching the idea
off costs that factor of training time (the idea helps); < 1: the run is faster without it. The same number for
another seed of the full recipe is the noise. Shorter budgets than the main comparison: effects that only appear
later in training are not seen here.

Seeds and masks: every run is validated on the same masks (harness.VAL_MASK_SEED), so the seed-to-seed difference
is model noise. How much a different draw of masks would move the loss is measured separately: the seed-0 final
checkpoint scored on seed-1 masks (harness.checkpoint_loss), and the seed-1 final checkpoint on the seed-0 masks.
"""
import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402


def log(*a):
    print(*a, flush=True)


HIDDEN_ADAMW_LRS = (1e-3, 3e-3, 1e-2)

# The recipe's ideas, one knob each: id -> (label, the train.py keys that switch the idea off). This script and
# ablation_blocks.py (the same variants past the controls, seeds in paired blocks) both read this one list. Muon's
# ablation is not in it: Adam on the hidden matrices needs its own LR (variants() below, sweep.py for the blocks).
ONE_KNOB = {
    "no_unet": ("no UNet skips", dict(unet=False)),
    "no_x0_mix": ("no x0 mixing", dict(x0_mix=False)),
    "no_value_emb": ("no value embeddings", dict(value_embeddings=0)),
    "no_softcap": ("no soft logit cap", dict(soft_logit_cap=0.0)),
    "mask15": ("mask rate 0.15", dict(mask_rate=0.15)),
    "constant_lr": ("schedule: constant LR (no cooldown)", dict(scheduler_type="constant")),
    "cosine": ("schedule: cosine (instead of trapezoid)", dict(scheduler_type="cosine")),
}


def variants(hidden_adamw_lrs=HIDDEN_ADAMW_LRS) -> dict[str, dict]:
    """Name -> train.py keys that differ from the full recipe (seed handled separately). Each switches one thing;
    the Muon ablation moves only the hidden matrices to Adam (the other Adam groups and the schedule unchanged) and
    is run at every LR of `hidden_adamw_lrs`, since Muon's LR means nothing to Adam."""
    muon = {f"hidden matrices: Muon -> Adam, LR {lr:g}": dict(hidden_optimizer="adamw", lr_hidden_adamw=lr)
            for lr in hidden_adamw_lrs}
    return muon | {label: keys for label, keys in ONE_KNOB.values()}


def ratio_at_worse_loss(full: dict, other: dict):
    """(L*, time ratio other/full at L*) with L* the worse final loss; None when a run has no curve."""
    if not full["val"] or not other["val"]:
        return None, None
    target = max(full["final_val_loss"], other["final_val_loss"])
    t_full, t_other = harness.time_to_loss(full["val"], target), harness.time_to_loss(other["val"], target)
    if not t_full or not t_other:
        return target, None
    return target, t_other / t_full


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget_minutes", type=float, default=1.25)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="seeds of the full recipe (noise)")
    p.add_argument("--only", nargs="*", default=None, help="run only variants whose name contains one of these")
    p.add_argument("--hidden_size", type=int, default=64)
    p.add_argument("--num_hidden_layers", type=int, default=4)
    p.add_argument("--num_attention_heads", type=int, default=4)
    p.add_argument("--value_embeddings", type=int, default=1)
    p.add_argument("--batch_size", type=int, default=6144)
    p.add_argument("--row_length", type=int, default=2048)
    p.add_argument("--max_length", type=int, default=512)
    p.add_argument("--n_val", type=int, default=500)
    p.add_argument("--n_evals", type=int, default=8)
    p.add_argument("--hidden_adamw_lrs", type=float, nargs="+", default=list(HIDDEN_ADAMW_LRS),
                   help="LRs of the Muon ablation (the hidden matrices on Adam); the best one is the ablation's result")
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--out", default=str(harness.RESULTS / "ablations"))
    args = p.parse_args(argv)
    if args.smoke:
        args.budget_minutes, args.n_val, args.n_evals = 0.04, 40, 2
        args.hidden_size, args.num_hidden_layers, args.num_attention_heads = 32, 2, 2
        args.value_embeddings, args.batch_size, args.row_length, args.max_length = 1, 2048, 1024, 256
        args.only = ["unet"] if args.only is None else args.only  # 3 processes: two seeds and one ablation
        if args.out == p.get_default("out"):
            args.out = str(harness.RESULTS / "tmp" / "smoke" / "ablations")
    out = Path(args.out)
    work = harness.RESULTS / "tmp" / ("smoke_ablations" if args.smoke else out.name)
    work.mkdir(parents=True, exist_ok=True)
    t_start = time.time()

    info = harness.machine_info()
    log(harness.machine_line(info))
    data_dir, _ = harness.prepare_data(args.max_length, args.n_val, smoke=args.smoke, log=log)
    calib_dir, _ = harness.prepare_data(args.max_length, 8, smoke=args.smoke, log=log)
    budget_s = 60 * args.budget_minutes

    base = dict(architecture="speedrun", recipe="speedrun", hidden_size=args.hidden_size,
                num_hidden_layers=args.num_hidden_layers, num_attention_heads=args.num_attention_heads,
                value_embeddings=args.value_embeddings, batch_size=args.batch_size, row_length=args.row_length,
                max_length=args.max_length, num_workers=0)
    # One pilot sets the validation spacing for every variant (they run at about the same speed; the curves are
    # interpolated in time anyway, so the exact spacing does not enter the result).
    sps = 2.0 if args.smoke else harness.steps_per_second("ablation_base", work, calib_dir, args.seeds[0], base, log)
    todo = {f"full recipe (seed {s})": (s, {}) for s in args.seeds}
    for name, overrides in variants(args.hidden_adamw_lrs).items():
        if args.only is None or any(o.lower() in name.lower() for o in args.only):
            todo[name] = (args.seeds[0], overrides)

    runs = {}
    for k, (name, (seed, overrides)) in enumerate(todo.items()):
        log(f"== [{k + 1}/{len(todo)}] {name} ==")
        runs[name] = harness.run_train_py(f"ablation_{k:02d}", work, data_dir, budget_s, args.n_evals, sps, seed,
                                          {**base, **overrides}, log)
        log(f"   final val loss {runs[name].get('final_val_loss')}, {runs[name].get('tokens_per_s') or 0:,.0f} tokens/s")

    full_name = f"full recipe (seed {args.seeds[0]})"
    full = runs[full_name]
    rows = []
    for name, rec in runs.items():
        target, ratio = ratio_at_worse_loss(full, rec) if rec is not full else (full["final_val_loss"], 1.0)
        rows.append({"variant": name, "status": rec.get("status"), "params": rec.get("n_params"),
                     "tokens_per_s": rec.get("tokens_per_s"), "final_val_loss": rec.get("final_val_loss"),
                     "delta_final_loss": (rec["final_val_loss"] - full["final_val_loss"])
                     if rec.get("final_val_loss") is not None and full.get("final_val_loss") is not None else None,
                     "L_star": target, "time_ratio_vs_full": ratio})

    # Mask noise: the same weights scored on the other seed's masks.
    mask_check = {}
    other_seeds = [s for s in args.seeds if s != args.seeds[0]]
    if other_seeds and full.get("checkpoints"):
        s1 = other_seeds[0]
        rec1 = runs[f"full recipe (seed {s1})"]
        mask_check = {
            "seed0_model_on_seed0_masks": full["final_val_loss"],
            f"seed0_model_on_seed{s1}_masks": harness.checkpoint_loss(full["checkpoints"][-1], data_dir, s1),
        }
        if rec1.get("checkpoints"):
            # rec1 was validated on the common masks (harness.VAL_MASK_SEED): its own loss is the seed-0-mask one.
            mask_check[f"seed{s1}_model_on_seed0_masks"] = rec1["final_val_loss"]
            mask_check[f"seed{s1}_model_on_seed{s1}_masks"] = harness.checkpoint_loss(rec1["checkpoints"][-1],
                                                                                      data_dir, s1)
    seed_rows = [r for r in rows if r["variant"].startswith("full recipe")]
    noise = {"time_ratios_other_seeds": [r["time_ratio_vs_full"] for r in seed_rows[1:]],
             "delta_final_loss_other_seeds": [r["delta_final_loss"] for r in seed_rows[1:]]}
    if len(seed_rows) > 1:
        finals = [r["final_val_loss"] for r in seed_rows if r["final_val_loss"] is not None]
        if len(finals) > 1:
            mean = sum(finals) / len(finals)
            noise["final_loss_std_over_seeds"] = math.sqrt(sum((f - mean) ** 2 for f in finals) / (len(finals) - 1))

    cols = [("variant", "variant"), ("params", "params"), ("tokens_per_s", "tokens/s"),
            ("final_val_loss", "final val loss"), ("delta_final_loss", "Δ final loss"),
            ("L_star", "L* (worse final)"), ("time_ratio_vs_full", "time to L*: ablated / full")]
    table = harness.fmt_table(rows, cols)
    log(f"\n{harness.machine_line(info)}")
    log(f"ablations: {args.budget_minutes} min of training each, size {args.hidden_size}x{args.num_hidden_layers} "
        f"layers, {args.batch_size} tokens/step\n{table}")
    log(f"noise (other seeds of the full recipe): {json.dumps(noise)}")
    if mask_check:
        log("mask check (final checkpoints re-scored by harness.py): "
            + ", ".join(f"{k} {v:.4f}" for k, v in mask_check.items()))

    results = {"machine": info, "args": vars(args), "table": rows, "noise": noise, "mask_check": mask_check,
               "runs": {name: harness.compact(rec) for name, rec in runs.items()},
               "wall_time_s": time.time() - t_start}
    harness.write_json(out.with_suffix(".json"), results)
    harness.write_csv(out.with_suffix(".csv"), rows)
    out.with_suffix(".md").write_text(f"{harness.machine_line(info)}\n\n{table}\n\nnoise: {json.dumps(noise)}\n"
                                      f"mask check: {json.dumps(mask_check)}\n")
    harness.plot_curves({name: rec["val"] for name, rec in runs.items()}, out.with_suffix(".png"), None,
                        f"ablations, {args.budget_minutes} min each; {info['cpu']}, {info['cores']} cores")
    log(f"\nwrote {out}.json/.csv/.md/.png in {time.time() - t_start:.0f} s")


if __name__ == "__main__":
    main()
