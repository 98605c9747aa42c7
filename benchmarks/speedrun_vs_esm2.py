"""Side by side, same data, same wall-clock training budget: our speedrun recipe vs the ESM2 recipe, twice.

    python benchmarks/speedrun_vs_esm2.py --budget_minutes 3.5          # the numbers in docs/RESULTS.md (~26 min)
    python benchmarks/speedrun_vs_esm2.py --smoke                       # ~1 min: a tiny run of every stage

Recipes (each a separate process, run back to back on this machine):
  speedrun      train.py, architecture speedrun + recipe speedrun: UNet skips, value embeddings, soft cap, Muon on
                hidden matrices + Adam elsewhere, trapezoid schedule whose progress is training time / budget.
  esm2 (ours)   train.py, architecture esm2 + recipe esm2: the ESM2 blocks and the AdamW recipe in our code base
                (packed rows, our loader), with the reference's tuned LR / warm-up / tokens per step.
  reference     hf_reference.py: Hugging Face EsmForMaskedLM + torch AdamW + 15% BERT 80/10/10 masking + padded
                batches of whole cropped sequences + warm-up / linear decay (what most practitioners run).
                Given a fair chance first: a sweep of its peak LR (extended once if the best is at the edge of the
                grid), then tokens per step, then warm-up, at a reduced budget; its best setting runs at full budget.

All three have the same size class (layers, width, heads), the same training data (sp50_train, tokenized once),
the same validation (harness.py: fixed 15% <mask> positions on the first n_val sp50_valid sequences, loss per masked
token), validation outside the training clock, and validations at (nearly) the same training times.

Output: a table (parameters, tokens/s, final validation loss, time and tokens to reach the reference's final loss,
speedup), results/speedrun_vs_esm2.{json,csv,md} and results/speedrun_vs_esm2.png (loss vs training time).
Speedup = (time the reference needs to reach its own final loss) / (time the recipe needs to reach that loss),
both read off the validation curves by linear interpolation in time (harness.time_to_loss).
"""
import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

PY = sys.executable
REFERENCE = "reference (HF EsmForMaskedLM + AdamW)"


def log(*a):
    print(*a, flush=True)


# ---------------------------------------------------------------- one training run of each kind
def run_reference(tag: str, args, data_dir, work: Path, budget_s: float, lr: float, batch_sequences: int,
                  warmup_fraction: float, n_evals: int, seed: int) -> dict:
    out = work / f"{tag}.json"
    cmd = [PY, harness.ROOT / "benchmarks" / "hf_reference.py", "--data_dir", data_dir,
           "--data_name", harness.DATA_NAME, "--hidden_size", args.hidden_size,
           "--num_hidden_layers", args.num_hidden_layers, "--num_attention_heads", args.num_attention_heads,
           "--max_length", args.max_length, "--batch_sequences", batch_sequences, "--lr", lr,
           "--warmup_fraction", warmup_fraction, "--budget_s", budget_s, "--eval_every_s", budget_s / n_evals,
           "--seed", seed, "--val_mask_seed", harness.VAL_MASK_SEED, "--output", out]
    rc = harness.run_logged(cmd, work / f"{tag}.log", log)
    return harness.load_record(out, rc, tag)


# ---------------------------------------------------------------- main
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget_minutes", type=float, default=3.5, help="training-time budget of each main run")
    p.add_argument("--sweep_budget_minutes", type=float, default=1.25, help="budget of each reference sweep run")
    p.add_argument("--sweep_lrs", type=float, nargs="+", default=[1e-3, 2e-3, 4e-3])
    p.add_argument("--sweep_batch_sequences", type=int, nargs="*", default=[8, 32],
                   help="extra batch sizes (sequences) tried at the best LR; the first LR stage uses --batch_sequences")
    p.add_argument("--sweep_warmups", type=float, nargs="*", default=[0.15],
                   help="extra warm-up fractions tried at the best LR and batch")
    p.add_argument("--batch_sequences", type=int, default=16, help="reference batch in the LR stage of the sweep")
    p.add_argument("--warmup_fraction", type=float, default=0.05, help="reference warm-up in the LR stage")
    p.add_argument("--skip_sweep", action="store_true", help="use --ref_lr/--batch_sequences/--warmup_fraction")
    p.add_argument("--ref_lr", type=float, default=2e-3)
    p.add_argument("--hidden_size", type=int, default=64)
    p.add_argument("--num_hidden_layers", type=int, default=4)
    p.add_argument("--num_attention_heads", type=int, default=4)
    p.add_argument("--value_embeddings", type=int, default=1, help="speedrun: tables on the first/last k layers")
    p.add_argument("--speedrun_batch_size", type=int, default=6144, help="speedrun tokens per step")
    p.add_argument("--row_length", type=int, default=2048)
    p.add_argument("--max_length", type=int, default=512)
    p.add_argument("--n_val", type=int, default=500, help="validation sequences (first n of sp50_valid)")
    p.add_argument("--n_evals", type=int, default=10, help="validations per run, at equal training-time intervals")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true", help="tiny model, data and budgets: checks the plumbing in seconds")
    p.add_argument("--out", default=str(harness.RESULTS / "speedrun_vs_esm2"), help="results prefix")
    p.add_argument("--report_only", action="store_true", help="rebuild tables and plot from {out}.json; no training")
    args = p.parse_args(argv)
    if args.report_only:
        saved = json.loads(Path(args.out).with_suffix(".json").read_text())
        report(saved["machine"], saved["args"], saved["reference_setting"], saved["sweep"], saved["runs"],
               saved["validation_cross_check"], Path(args.out), saved["wall_time_s"])
        return
    if args.smoke:
        args.budget_minutes, args.sweep_budget_minutes = 0.08, 0.05
        args.sweep_lrs, args.sweep_batch_sequences, args.sweep_warmups = [2e-3], [], []
        args.hidden_size, args.num_hidden_layers, args.num_attention_heads = 32, 2, 2
        args.value_embeddings, args.speedrun_batch_size, args.row_length, args.max_length = 1, 2048, 1024, 256
        args.n_val, args.n_evals = 40, 2
        if args.out == p.get_default("out"):
            args.out = str(harness.RESULTS / "tmp" / "smoke" / "speedrun_vs_esm2")
    out = Path(args.out)
    work = harness.RESULTS / "tmp" / ("smoke" if args.smoke else out.name)
    work.mkdir(parents=True, exist_ok=True)
    t_start = time.time()

    info = harness.machine_info()
    log(harness.machine_line(info))
    data_dir, _ = harness.prepare_data(args.max_length, args.n_val, smoke=args.smoke, log=log)
    calib_dir, _ = harness.prepare_data(args.max_length, 8, smoke=args.smoke, log=log)
    size = dict(hidden_size=args.hidden_size, num_hidden_layers=args.num_hidden_layers,
                num_attention_heads=args.num_attention_heads)
    budget_s, sweep_s = 60 * args.budget_minutes, 60 * args.sweep_budget_minutes

    # ---- 1. the reference's sweep at the reduced budget --------------------------------------------------------
    sweep = []

    def try_setting(lr, bs, wu):
        tag = f"sweep_lr{lr:g}_bs{bs}_wu{wu:g}"
        rec = run_reference(tag, args, data_dir, work, sweep_s, lr, bs, wu, max(2, args.n_evals // 2), args.seed)
        row = {"lr": lr, "batch_sequences": bs, "warmup_fraction": wu, "final_val_loss": rec.get("final_val_loss"),
               "tokens_per_s": rec.get("tokens_per_s"), "steps": rec.get("steps"), "status": rec.get("status")}
        sweep.append(row)
        log(f"  sweep lr {lr:g} batch {bs} warm-up {wu:g}: final val loss {row['final_val_loss']}")
        return row

    def best():
        ok = [r for r in sweep if r["final_val_loss"] is not None and math.isfinite(r["final_val_loss"])]
        return min(ok, key=lambda r: r["final_val_loss"])

    if args.skip_sweep:
        chosen = {"lr": args.ref_lr, "batch_sequences": args.batch_sequences, "warmup_fraction": args.warmup_fraction}
    else:
        log(f"== reference sweep, {args.sweep_budget_minutes} min each ==")
        lrs = sorted(args.sweep_lrs)
        for lr in lrs:
            try_setting(lr, args.batch_sequences, args.warmup_fraction)
        if len(lrs) > 1 and best()["lr"] in (lrs[0], lrs[-1]):  # best at an edge: look one step further out
            factor = lrs[1] / lrs[0]
            edge = best()["lr"]
            try_setting(edge * factor if edge == lrs[-1] else edge / factor, args.batch_sequences, args.warmup_fraction)
        for bs in args.sweep_batch_sequences:
            try_setting(best()["lr"], bs, args.warmup_fraction)
        for wu in args.sweep_warmups:
            try_setting(best()["lr"], best()["batch_sequences"], wu)
        chosen = {k: best()[k] for k in ("lr", "batch_sequences", "warmup_fraction")}
    log(f"reference setting for the full budget: {chosen}")

    # ---- 2. the three recipes at the full budget ---------------------------------------------------------------
    log(f"== main comparison, {args.budget_minutes} min of training each ==")
    runs = {}
    runs[REFERENCE] = run_reference(
        "main_reference", args, data_dir, work, budget_s, chosen["lr"], chosen["batch_sequences"],
        chosen["warmup_fraction"], args.n_evals, args.seed)
    ref = runs[REFERENCE]

    # ESM2 recipe in our code: the reference's tuned LR and warm-up, and about its real tokens per step.
    ref_tokens_per_step = ref["tokens"] / max(ref["steps"], 1) if ref.get("steps") else 16 * 330
    esm2_rows = max(1, round(ref_tokens_per_step / args.row_length))
    esm2 = dict(architecture="esm2", recipe="esm2", expansion_ratio=4.0, intermediate_multiple_of=1,
                unet=False, x0_mix=False, value_embeddings=0, soft_logit_cap=0.0, tie_embeddings=True,
                token_dropout=True, bert_corruption=True, mask_rate=0.15, lr=chosen["lr"], scheduler_type="linear",
                lr_floor=0.1, grad_clip=1.0, batch_size=esm2_rows * args.row_length, row_length=args.row_length,
                max_length=args.max_length, num_workers=0, **size)
    speedrun = dict(architecture="speedrun", recipe="speedrun", value_embeddings=args.value_embeddings,
                    batch_size=args.speedrun_batch_size, row_length=args.row_length, max_length=args.max_length,
                    num_workers=0, **size)
    for name, tag, overrides in (("esm2 recipe, our code", "main_esm2_ours", esm2),
                                 ("speedrun (ours)", "main_speedrun", speedrun)):
        # Smoke mode skips the pilot (one process less); its guess only sets how often validation runs.
        sps = 2.0 if args.smoke else harness.steps_per_second(tag, work, calib_dir, args.seed, overrides, log)
        if overrides is esm2:  # warm-up: the reference's fraction of the budget, in steps
            overrides["lr_warmup_steps"] = max(1, round(chosen["warmup_fraction"] * sps * budget_s))
        runs[name] = harness.run_train_py(tag, work, data_dir, budget_s, args.n_evals, sps, args.seed, overrides, log)

    # Cross-check: our final checkpoints scored by the harness's padded, one-sequence-per-row validation.
    cross = {name: {"train_py": rec["final_val_loss"],
                    "harness": harness.checkpoint_loss(rec["checkpoints"][-1], data_dir, args.seed)}
             for name, rec in runs.items() if rec.get("checkpoints")}
    report(info, vars(args), chosen, sweep, {name: harness.compact(rec) for name, rec in runs.items()}, cross, out,
           time.time() - t_start)


def report(info, args: dict, chosen, sweep, runs, cross, out: Path, wall_time_s: float):
    """Time to the reference's final loss, the tables, and the files (also rebuilt alone by --report_only)."""
    ref = runs[REFERENCE]
    target = ref.get("final_val_loss")
    t_ref = harness.time_to_loss(ref["val"], target) if target is not None else None
    tok_ref = harness.tokens_to_loss(ref["val"], target) if target is not None else None
    rows = []
    for name, rec in runs.items():
        t = harness.time_to_loss(rec["val"], target) if target is not None else None
        tok = harness.tokens_to_loss(rec["val"], target) if target is not None else None
        rows.append({"recipe": name, "status": rec.get("status"), "params": rec.get("n_params"),
                     "tokens_per_step": round(rec["tokens"] / rec["steps"]) if rec.get("steps") else None,
                     "steps": rec.get("steps"), "tokens_per_s": rec.get("tokens_per_s"),
                     "final_val_loss": rec.get("final_val_loss"), "time_to_ref_loss_s": t,
                     "tokens_to_ref_loss": tok,
                     "speedup": (t_ref / t) if t and t_ref else None,
                     "token_efficiency": (tok_ref / tok) if tok and tok_ref else None})
    # Robustness: the speedup read at easier targets too (the reference's loss after 50% and 75% of its budget),
    # since the reference's curve is flat near its end, where a little noise moves its final crossing a lot.
    budget = ref["val"][-1]["train_time_s"] if ref["val"] else None
    profile = []
    for frac in (0.5, 0.75, 1.0):
        if budget is None:
            break
        level = harness.loss_at(ref["val"], frac * budget)
        t_r = harness.time_to_loss(ref["val"], level)
        entry = {"target": f"reference loss at {frac:.0%} of its budget", "loss": level}
        for name, rec in runs.items():
            t = harness.time_to_loss(rec["val"], level)
            entry[name] = (t_r / t) if t and t_r else None
        profile.append(entry)
    cols = [("recipe", "recipe"), ("params", "params"), ("tokens_per_step", "tokens/step"),
            ("tokens_per_s", "tokens/s"), ("final_val_loss", "final val loss"),
            ("time_to_ref_loss_s", "time to ref. loss (s)"), ("speedup", "speedup"),
            ("tokens_to_ref_loss", "tokens to ref. loss"), ("token_efficiency", "token efficiency")]
    table = harness.fmt_table(rows, cols)
    profile_table = harness.fmt_table(profile, [("target", "target"), ("loss", "loss")] +
                                      [(name, f"speedup, {name}") for name in runs])
    sweep_table = harness.fmt_table(sweep, [("lr", "peak LR"), ("batch_sequences", "batch (sequences)"),
                                            ("warmup_fraction", "warm-up (fraction)"),
                                            ("final_val_loss", "final val loss"), ("tokens_per_s", "tokens/s"),
                                            ("steps", "steps")]) if sweep else "(sweep skipped)"

    log(f"\n{harness.machine_line(info)}")
    log(f"data: sp50_train (tokenized once), validation: first {args['n_val']} sp50_valid sequences cropped to "
        f"{args['max_length']} tokens, fixed 15% masks (seed {harness.VAL_MASK_SEED})")
    log(f"\nreference sweep ({args['sweep_budget_minutes']} min each):\n{sweep_table}")
    log(f"reference setting for the full budget: {chosen}")
    log(f"\nmain comparison ({args['budget_minutes']} min of training each; target = reference final loss "
        f"{target if target is None else f'{target:.4f}'}):\n{table}")
    log(f"\nspeedup at other targets:\n{profile_table}")
    for name, c in cross.items():
        log(f"validation cross-check, {name}: train.py {c['train_py']:.5f} vs harness {c['harness']:.5f}")

    results = {"machine": info, "args": args, "reference_setting": chosen, "sweep": sweep, "table": rows,
               "target_loss": target, "speedup_at_other_targets": profile, "validation_cross_check": cross,
               "runs": runs, "wall_time_s": wall_time_s}
    harness.write_json(out.with_suffix(".json"), results)
    harness.write_csv(out.with_suffix(".csv"), rows)
    if sweep:
        harness.write_csv(out.parent / (out.name + "_sweep.csv"), sweep)
    out.with_suffix(".md").write_text(f"{harness.machine_line(info)}\n\n### Reference sweep\n\n{sweep_table}\n\n"
                                      f"### Main comparison\n\n{table}\n\n### Speedup at other targets\n\n"
                                      f"{profile_table}\n")
    harness.plot_curves({name: rec["val"] for name, rec in runs.items()}, out.with_suffix(".png"), target,
                        f"{args['budget_minutes']} min per recipe; {info['cpu']}, {info['cores']} cores")
    log(f"\nwrote {out}.json/.csv/.md/.png (benchmark wall time {wall_time_s:.0f} s)")

if __name__ == "__main__":
    main()
