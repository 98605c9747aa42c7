"""Cost per token of attention over packed rows as rows get longer: document masking vs dense full-row attention.

    python benchmarks/attention_scaling.py                 # rows of 512 ... 16,384 tokens (~2 min)
    python benchmarks/attention_scaling.py --smoke         # seconds

A row of length T is filled with real Swiss-Prot sequences (sp50_train, in a seeded random order, each cropped to
--max_length tokens as in training; median ~330 tokens) while they fit; the few tokens left are padding.
For each T we time one attention layer, forward + backward, on random q, k, v of shape (1, T, H, Dh):

  model path     model.py's own: `DocumentMask(seq_ids, "sdpa")` (built once per batch) + `sdpa_attention_packed`,
                 which gathers each sequence into a length bucket, so the work is Σ L_i·P_i (P_i = L_i rounded up to
                 a multiple of 64), independent of T for a given mix of lengths;
  dense + mask   SDPA over the whole row with the document mask as a dense (T, T) boolean mask: the same outputs
                 (checked), but the work of the whole T × T score matrix;
  dense, no mask SDPA over the whole row without any mask: wrong outputs (sequences see each other), shown only
                 as the cost floor of any full-row kernel.

FLOPs per token from the formula of `PLM.flops_per_token` (attention part only, training = 3 × forward):
document-masked 3·4·S·D with S = Σ L_i² / Σ L_i (the token-weighted mean length); dense 3·4·T·D.
The claim to check: the model path's time per token stays flat as T grows (it follows the sequences' lengths),
while dense attention's grows linearly with T.
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402
from model import DocumentMask, sdpa_attention_packed  # noqa: E402
from validation import shard_sequences  # noqa: E402


def log(*a):
    print(*a, flush=True)


def packed_row(lengths: np.ndarray, row_length: int, max_length: int, rng) -> torch.Tensor:
    """(1, T) int32 seq_ids: sequences in random order, each cropped to max_length, placed while they fit (one that
    does not fit is passed over) until fewer than 30 tokens are left or 5,000 candidates were tried."""
    seq_ids = torch.full((1, row_length), -1, dtype=torch.int32)
    pos, sid = 0, 0
    for i in rng.permutation(len(lengths))[:5000]:
        n = int(min(lengths[i], max_length))
        if pos + n <= row_length:
            seq_ids[0, pos:pos + n] = sid
            pos, sid = pos + n, sid + 1
        if row_length - pos < 30:
            break
    return seq_ids


def time_fwd_bwd(fn, q, k, v, reps: int) -> float:
    """Median wall time of fn(q, k, v) forward + backward (seconds)."""
    times = []
    for _ in range(reps):
        for t in (q, k, v):
            t.grad = None
        t0 = time.perf_counter()
        y = fn(q, k, v)
        y.backward(torch.ones_like(y))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--row_lengths", type=int, nargs="+", default=[512, 1024, 2048, 4096, 8192, 16384])
    p.add_argument("--max_length", type=int, default=1024, help="crop of each sequence (ESM2's context)")
    p.add_argument("--num_heads", type=int, default=4)
    p.add_argument("--head_dim", type=int, default=64)
    p.add_argument("--reps", type=int, default=3, help="repetitions per measurement (median); 1 for dense >= 8k")
    p.add_argument("--max_dense_length", type=int, default=16384, help="longest row timed with dense attention")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--out", default=str(harness.RESULTS / "attention_scaling"))
    args = p.parse_args(argv)
    if args.smoke:
        args.row_lengths, args.reps, args.num_heads, args.head_dim = [512, 1024], 1, 2, 32
        if args.out == p.get_default("out"):
            args.out = str(harness.RESULTS / "tmp" / "smoke" / "attention_scaling")
    out = Path(args.out)
    info = harness.machine_info()
    log(harness.machine_line(info))

    # Real sequence lengths (with <cls>/<eos>) from the training data; the smoke data holds its first 3,000.
    data_dir, _ = harness.prepare_data(512, 8, smoke=args.smoke, log=log)
    lengths = np.array([len(s) for s in shard_sequences(data_dir, harness.DATA_NAME, "train")])
    cropped = np.minimum(lengths, args.max_length)
    log(f"sequence lengths (tokens, cropped to {args.max_length}): median {np.median(cropped):.0f}, "
        f"mean {cropped.mean():.0f}, token-weighted mean {(cropped ** 2).sum() / cropped.sum():.0f}")

    H, Dh = args.num_heads, args.head_dim
    D = H * Dh
    rng = np.random.default_rng(args.seed)
    torch.manual_seed(args.seed)
    rows = []
    for T in args.row_lengths:
        seq_ids = packed_row(lengths, T, min(args.max_length, T), rng)
        ids = seq_ids[0]
        L = torch.bincount(ids[ids >= 0].long()).double()
        real = int(L.sum())
        S = float((L ** 2).sum() / L.sum())  # token-weighted mean attended length
        q, k, v = (torch.randn(1, T, H, Dh, requires_grad=True) for _ in range(3))

        def model_path(q, k, v):
            mask = DocumentMask(seq_ids, "sdpa")  # built per batch in the model; counted here
            return sdpa_attention_packed(q, k, v, mask, 0.0)

        dense_mask = (seq_ids[0][:, None] == seq_ids[0][None, :]) & (seq_ids[0][:, None] >= 0)  # (T, T)
        dense_mask = dense_mask | torch.eye(T, dtype=torch.bool)  # padding queries see themselves: no NaN rows

        def dense_masked(q, k, v):
            y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                               attn_mask=dense_mask)
            return y.transpose(1, 2) * (seq_ids[0] >= 0)[None, :, None, None]  # zero padding, as the model does

        def dense_nomask(q, k, v):
            return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))

        with torch.no_grad():  # the two correct paths agree (padding rows are zero in both)
            diff = (model_path(q, k, v) - dense_masked(q, k, v)).abs().max().item()
        time_fwd_bwd(model_path, q, k, v, 1)  # one untimed call: first-use allocations
        t_model = time_fwd_bwd(model_path, q, k, v, args.reps)
        dense_reps = 1 if T >= 8192 else args.reps
        t_dense = time_fwd_bwd(dense_masked, q, k, v, dense_reps) if T <= args.max_dense_length else None
        t_nomask = time_fwd_bwd(dense_nomask, q, k, v, dense_reps) if T <= args.max_dense_length else None
        row = {"row_length": T, "sequences": len(L), "real_tokens": real, "fill": real / T,
               "attended_length_S": S,
               "model_us_per_token": 1e6 * t_model / real,
               "dense_masked_us_per_token": 1e6 * t_dense / real if t_dense else None,
               "dense_nomask_us_per_token": 1e6 * t_nomask / real if t_nomask else None,
               "model_mflop_per_token": 3 * 4 * S * D / 1e6, "dense_mflop_per_token": 3 * 4 * T * D / 1e6,
               "dense_over_model_time": t_dense / t_model if t_dense else None,
               "max_abs_diff_model_vs_dense": diff}
        rows.append(row)
        log(f"T={T:>6}: {len(L):>3} sequences, model {row['model_us_per_token']:.2f} µs/token, dense+mask "
            f"{row['dense_masked_us_per_token'] or float('nan'):.2f} µs/token, max |diff| {diff:.1e}")

    cols = [("row_length", "row length T"), ("sequences", "sequences"), ("fill", "fill"),
            ("attended_length_S", "S = ΣL²/ΣL"), ("model_mflop_per_token", "model MFLOP/token"),
            ("dense_mflop_per_token", "dense MFLOP/token"), ("model_us_per_token", "model µs/token"),
            ("dense_masked_us_per_token", "dense+mask µs/token"), ("dense_nomask_us_per_token", "dense no-mask µs/token"),
            ("dense_over_model_time", "dense+mask / model time")]
    table = harness.fmt_table(rows, cols)
    log(f"\n{harness.machine_line(info)}\nattention only, one layer, forward + backward, H={H}, head_dim={Dh}, fp32\n"
        f"{table}")
    harness.write_json(out.with_suffix(".json"), {"machine": info, "args": vars(args), "rows": rows})
    harness.write_csv(out.with_suffix(".csv"), rows)
    out.with_suffix(".md").write_text(f"{harness.machine_line(info)}\n\n{table}\n")
    plot(rows, out.with_suffix(".png"), info)
    log(f"wrote {out}.json/.csv/.md/.png")


def plot(rows, path: Path, info):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.6), dpi=110)
    T = [r["row_length"] for r in rows]
    for key, label in (("model_us_per_token", "model path (document-masked, per sequence)"),
                       ("dense_masked_us_per_token", "dense T×T + document mask"),
                       ("dense_nomask_us_per_token", "dense T×T, no mask (wrong; floor)")):
        pts = [(t, r[key]) for t, r in zip(T, rows) if r[key] is not None]
        if pts:
            a.plot(*zip(*pts), marker="o", label=label)
    b.plot(T, [r["model_mflop_per_token"] for r in rows], marker="o", label="document-masked: 12·S·D")
    b.plot(T, [r["dense_mflop_per_token"] for r in rows], marker="o", label="dense: 12·T·D")
    for ax, ylabel in ((a, "measured µs per real token"), (b, "training MFLOP per token (attention)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("row length T (tokens)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"attention cost per token vs packed-row length ({info['cpu']}, {info['cores']} cores)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    main()
