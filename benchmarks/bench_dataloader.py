"""Throughput of dataloader.py on real proteins: tokens per second delivered, per worker process, masking on.

    python benchmarks/bench_dataloader.py            # ~1 min: 60k Swiss-Prot sequences, rows of 8192 tokens
    python benchmarks/bench_dataloader.py --smoke    # a few seconds (CI): checks the pipeline runs end to end

Converts the first sequences of ../shared/data/swissprot2014_sp50/sp50_train.fasta.gz into a temporary shard
(vocab.encode_with_specials + shards.write_shard), then prints
  1. the cost of each stage in the main process (plan = scan + shuffle/crop + pack; rows; masking), and what the
     plan costs per 1e8-token shard (what every process pays per shard visit, and on resume per skipped shard);
  2. a table of TrainLoader throughput for each num_workers, with the ratio to num_workers=0 measured in the
     same run. SpeedrunningPLMs' whole trainer consumes 275.9k tokens/s per H100 (its README): the loader must beat
     that by a wide margin per worker.
The machine's load average is printed: on a shared CPU the figures are lower bounds. Both go to
results/bench_dataloader.{md,json} (--smoke: results/tmp/smoke/, git-ignored), with the machine and git state.
"""
import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import dataloader as dl  # noqa: E402
from fasta import read_fasta  # noqa: E402
from shards import write_shard  # noqa: E402
from vocab import encode_with_specials  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import RESULTS, machine_info, machine_line, write_json  # noqa: E402

FASTA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "swissprot2014_sp50" / "sp50_train.fasta.gz"


def write_benchmark_shard(directory: Path, n_sequences: int) -> int:
    """bench_train_000000.bin from real sequences; returns its token count."""
    body = np.concatenate([encode_with_specials(r.residues) for r in read_fasta(FASTA, limit=n_sequences)])
    write_shard(directory / "bench_train_000000.bin", body)
    return body.size


def time_stages(directory: Path, args, masking: dl.MaskingConfig) -> dict:
    """Per-stage cost in this process, on the whole benchmark shard: printed, and returned for the results file."""
    path = directory / "bench_train_000000.bin"
    plan = dl.PackingPlan([path], seed=0, row_length=args.row_length, max_length=args.max_length)
    tokens = plan.shard_tokens(0)
    t0 = time.perf_counter()
    starts, lengths = dl.scan_sequences(tokens, path)
    t1 = time.perf_counter()
    pieces = dl.visit_pieces(0, 0, 0, starts, lengths, args.max_length)
    t2 = time.perf_counter()
    rows, offsets, _ = dl.pack_greedy(pieces.length, 0, args.row_length)
    t3 = time.perf_counter()
    pieces.row, pieces.offset = rows, offsets
    n_rows = int(rows[-1])  # the last row may still be open
    n_micro = n_rows // args.rows_per_micro
    fill_s = mask_s = 0.0
    for m in range(n_micro):
        first = m * args.rows_per_micro
        t4 = time.perf_counter()
        part = pieces.take(slice(np.searchsorted(rows, first), np.searchsorted(rows, first + args.rows_per_micro)))
        row_tokens, seq_ids = dl.fill_rows(part, first, args.rows_per_micro, args.row_length, plan.shard_tokens)
        t5 = time.perf_counter()
        dl.mask_rows(row_tokens, seq_ids, first, 0, masking.mask_rate, masking)
        t6 = time.perf_counter()
        fill_s, mask_s = fill_s + t5 - t4, mask_s + t6 - t5
    plan_s = t3 - t0
    row_tokens_total = n_micro * args.rows_per_micro * args.row_length
    stages = {"shard_tokens": int(tokens.size), "sequences": int(starts.size), "cropped": int(pieces.cropped.sum()),
              "rows": n_rows, "padding_fraction": float(1 - pieces.length[rows < n_rows].sum()
                                                        / (n_rows * args.row_length)),
              "scan_s": t1 - t0, "shuffle_crop_s": t2 - t1, "pack_s": t3 - t2,
              "plan_s_per_1e8_tokens": plan_s / tokens.size * 1e8,
              "fill_rows_tok_s": row_tokens_total / fill_s, "mask_rows_tok_s": row_tokens_total / mask_s}
    print(f"shard: {tokens.size:,} tokens, {starts.size:,} sequences, {stages['cropped']:,} cropped to "
          f"{args.max_length}; {n_rows:,} rows of {args.row_length} ({100 * stages['padding_fraction']:.1f}% padding)")
    print(f"plan   scan {t1 - t0:.3f} s + shuffle/crop {t2 - t1:.3f} s + pack {t3 - t2:.3f} s "
          f"= {stages['plan_s_per_1e8_tokens']:.2f} s per 1e8-token shard")
    print(f"rows   {stages['fill_rows_tok_s'] / 1e6:8.1f} M row tokens/s   (fill_rows)")
    print(f"mask   {stages['mask_rows_tok_s'] / 1e6:8.1f} M row tokens/s   (mask_rows, "
          f"bert={masking.bert_corruption})")
    return stages


def time_loader(directory: Path, args, masking: dl.MaskingConfig, num_workers: int) -> dict:
    """Micro-batches per second out of a TrainLoader (first batch, i.e. worker start-up, not timed)."""
    config = dl.DataConfig(data_dir=str(directory), data_name="bench", batch_size=args.rows_per_micro * args.row_length,
                           row_length=args.row_length, max_length=args.max_length, num_workers=num_workers,
                           mask_rate=masking.mask_rate, bert_corruption=masking.bert_corruption)
    loader = dl.TrainLoader(config, seed=0)
    stream = iter(loader)
    next(stream)
    start_stats = loader.stats()
    start = time.perf_counter()
    n = 0
    while time.perf_counter() - start < args.seconds:
        next(stream)
        n += 1
    elapsed = time.perf_counter() - start
    stream.close()
    stats = loader.stats()
    row_tokens = n * args.rows_per_micro * args.row_length
    return {"workers": num_workers, "micro_batches": n, "seconds": elapsed,
            "row_tok_s": row_tokens / elapsed,
            "real_tok_s": (stats["real_tokens"] - start_stats["real_tokens"]) / elapsed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, finishes in a few seconds")
    parser.add_argument("--sequences", type=int, default=60_000, help="Swiss-Prot sequences in the shard")
    parser.add_argument("--row_length", type=int, default=8192, help="tokens per packed row")
    parser.add_argument("--max_length", type=int, default=1024, help="crop length, tokens")
    parser.add_argument("--rows_per_micro", type=int, default=8, help="rows per micro-batch")
    parser.add_argument("--seconds", type=float, default=6.0, help="timed seconds per num_workers setting")
    parser.add_argument("--workers", type=str, default="0,1,2", help="comma-separated num_workers to measure")
    parser.add_argument("--bert", action="store_true", help="80/10/10 BERT corruption (the costliest masking)")
    parser.add_argument("--out", default=str(RESULTS / "bench_dataloader"), help="writes OUT.md and OUT.json")
    args = parser.parse_args()
    if args.smoke:
        args.sequences, args.row_length, args.max_length = 2_000, 1024, 512
        args.rows_per_micro, args.seconds, args.workers = 4, 0.5, "0,1"
        if args.out == parser.get_default("out"):
            args.out = str(RESULTS / "tmp" / "smoke" / "bench_dataloader")
    masking = dl.MaskingConfig(mask_rate=0.2, bert_corruption=args.bert)
    info = machine_info()
    setup = (f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; "
             f"micro-batch = {args.rows_per_micro} x {args.row_length} tokens; mask_rate 0.2, bert={args.bert}")
    print(machine_line(info))
    print(setup)
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        write_benchmark_shard(directory, args.sequences)
        stages = time_stages(directory, args, masking)
        results = [time_loader(directory, args, masking, int(w)) for w in args.workers.split(",")]
    base = results[0]["row_tok_s"]
    lines = [f"{'workers':>7} {'micro-batches':>13} {'M row tok/s':>11} {'M real tok/s':>12} "
             f"{'M row tok/s/worker':>18} {'vs first':>8}"]
    for r in results:
        r["row_tok_s_per_worker"] = r["row_tok_s"] / max(1, r["workers"])
        r["vs_first"] = r["row_tok_s"] / base
        lines.append(f"{r['workers']:>7} {r['micro_batches']:>13} {r['row_tok_s'] / 1e6:>11.2f} "
                     f"{r['real_tok_s'] / 1e6:>12.2f} {r['row_tok_s_per_worker'] / 1e6:>18.2f} {r['vs_first']:>7.2f}x")
    table = "\n".join(lines)
    print(f"\n{table}")
    if min(r["micro_batches"] for r in results) == 0:  # before writing: a results file holds only complete runs
        sys.exit("no micro-batch was delivered in the timed window")
    out = Path(args.out)
    load_end = os.getloadavg()[0]
    write_json(out.with_suffix(".json"), {"machine": info, "args": vars(args), "masking": vars(masking),
                                          "loadavg_at_end": load_end, "stages": stages, "loaders": results})
    out.with_suffix(".md").write_text(f"{machine_line(info)}\n{setup}; load average at the end {load_end:.1f}\n\n"
                                      f"```\n{table}\n```\n")
    print(f"wrote {out}.md/.json")


if __name__ == "__main__":
    main()
