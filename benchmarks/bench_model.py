"""Training-step throughput on this machine's CPU: model.py vs Hugging Face `EsmForMaskedLM`, same sequences.

Every model trains on the same steps: real Swiss-Prot sequences (sp50_train, `<cls> residues <eos>` cropped to
`--max_length` tokens), 15% of residues replaced by `<mask>`, one fp32 forward + backward + AdamW step.
- HF `EsmForMaskedLM` at the ESM2-8M shape (6 layers, hidden 320, 20 heads, MLP 1280; built from an `EsmConfig`,
  nothing downloaded; `attn_implementation="sdpa"`, HF's fastest on CPU), two rows:
    padded     each step's sequences as one padded batch with an attention mask: how practitioners run it;
    bucketed   the same sequences with the same masks, sorted by length across the timed steps and cut into
               padded batches of the steps' own sizes (same number of steps, same sequences per step), in a
               seeded random order: what a length-grouped sampler (`Trainer(group_by_length=True)`,
               hf_reference.py's default) gives, so that HF computes little padding. Steps differ in tokens; the
               timed total of real tokens is the same as every other row's.
- Ours gets the same sequences packed into `--rows` rows of `--row_length` tokens (next-fit, in order), with
  document masking: `esm2` mode (the HF architecture inside model.py: isolates packing + attention) and the
  `speedrun` architecture at about the same parameter count (hidden 320, 5 heads of 64, 6 layers, MLP 1280).

Columns, for every row:
- real tokens/s: residues and specials (never padding) per second of step time; slot tokens/s: token slots the
  model computed (padding included: B·T for a padded batch, rows·row_length packed) per second.
- FLOPs, counted by `PLM.flops_per_token` (matmuls only, training = 3 × forward, docs/MODEL.md "FLOPs"), which is
  linear in the attended length S: f(S) = f(0) + k·S. HF rows use the formula of ours in esm2 mode (the same
  matmuls; its config is checked to match). Per batch:
    useful FLOPs    f(0)·(real tokens) + k·Σ L²   each real token attending over its own sequence: the work any
                                                  implementation must do;
    computed FLOPs  f(0)·(slots) + k·(pairs)      what the kernels ran: every slot through the matmuls, and pairs =
                                                  the (query, key) slots attention computes: B·T² for a padded
                                                  batch (SDPA with a mask scores every pair), Σ n·P² over ours'
                                                  SDPA buckets (sequences padded to a multiple of 64).
  Both divided by step time and by this CPU's fp32 matmul peak, measured in the same run (the best of a few
  `--peak_size`² matmuls at the models' thread count, before and after the timed rounds; the higher is used).
  useful / peak is the model FLOP utilisation (MFU).
Models are timed in interleaved rounds (one step of each, repeated, the first place rotating) so that load from
other processes hits all of them alike; ratios are against HF measured in the same run. Results: results/bench_model.{md,json}.

    python benchmarks/bench_model.py                 # the tables in docs/MODEL.md (HF rows take most of the time)
    python benchmarks/bench_model.py --compile       # + torch.compile'd variants of ours (adds compile time)
    python benchmarks/bench_model.py --profile       # + torch.profiler top ops of one step per model
    python benchmarks/bench_model.py --smoke         # a few seconds: CI checks that it runs
"""
import argparse
import dataclasses
import math
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402  (also puts the repository root on sys.path)
from fasta import read_fasta  # noqa: E402
from model import PLM, DocumentMask, ModelConfig, esm2_config  # noqa: E402
from vocab import CLS, EOS, MASK, PAD, VOCAB_SIZE, encode_with_specials  # noqa: E402

ESM2_8M = dict(hidden_size=320, num_attention_heads=20, num_hidden_layers=6)  # facebook/esm2_t6_8M_UR50D
SPEEDRUN_8M = dict(hidden_size=320, num_attention_heads=5, num_hidden_layers=6, expansion_ratio=4.0,
                   value_embeddings=2)
HF_PADDED, HF_BUCKETED = "HF EsmForMaskedLM (sdpa, padded)", "HF EsmForMaskedLM (sdpa, length-bucketed)"


@dataclasses.dataclass
class Layout:
    """What one batch asks of a model, whatever its weights: the inputs of the throughput and FLOP columns."""
    real: int        # real tokens (residues and specials)
    sum_sq: int      # Σ L² over its sequences: attention pairs if each real token attends only its own sequence
    slots: int       # token slots the model computes on, padding included
    pairs: int       # (query, key) slot pairs its attention computes, padding included


def padded_batch(pieces: list[tuple[np.ndarray, np.ndarray]]) -> dict:
    """Masked sequences [(inputs, labels)] -> one HF padded batch {"inputs": model kwargs, "layout": Layout}."""
    lengths = [inputs.size for inputs, _ in pieces]
    B, T = len(pieces), max(lengths)
    ids = np.full((B, T), PAD, dtype=np.int64)
    labels = np.full((B, T), -100, dtype=np.int64)
    attention = np.zeros((B, T), dtype=np.int64)
    for i, (inputs, target) in enumerate(pieces):
        ids[i, :inputs.size], labels[i, :inputs.size], attention[i, :inputs.size] = inputs, target, 1
    # SDPA with an attention mask scores every (query, key) pair of the padded (T, T) square, padding included
    layout = Layout(real=sum(lengths), sum_sq=sum(n * n for n in lengths), slots=B * T, pairs=B * T * T)
    return dict(inputs=dict(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(attention),
                            labels=torch.from_numpy(labels)), layout=layout)


def make_steps(sequences: list[str], n_steps: int, rows: int, row_length: int, max_length: int,
               seed: int) -> list[dict]:
    """Per step: the sequences (cropped to max_length) that fill `rows` packed rows in next-fit order, as dataloader.py
    packs them, masked once; as a packed batch ("ours") and as one padded batch ("hf"), each {"inputs", "layout"};
    "pieces" keeps the masked sequences [(inputs, labels)] for `length_bucketed`."""
    rng = np.random.default_rng(seed)
    order = iter(rng.permutation(len(sequences)))
    steps = []
    for _ in range(n_steps):
        chosen, row, used = [], 0, 0
        while True:
            tokens = encode_with_specials(sequences[next(order)])[:max_length].astype(np.int64)
            if used + tokens.size > row_length:
                row, used = row + 1, 0
                if row == rows:
                    break
            chosen.append((row, used, tokens))
            used += tokens.size
        ids = np.full((rows, row_length), PAD, dtype=np.int64)
        seq_ids = np.full((rows, row_length), -1, dtype=np.int32)
        labels = np.full((rows, row_length), -100, dtype=np.int64)
        next_seq_id, pieces = {}, []
        for r, start, tokens in chosen:
            residue = (tokens != CLS) & (tokens != EOS)
            masked = residue & (rng.random(tokens.size) < 0.15)
            inputs = np.where(masked, MASK, tokens)
            target = np.where(masked, tokens, -100)
            sl = slice(start, start + tokens.size)
            ids[r, sl], labels[r, sl] = inputs, target
            seq_ids[r, sl] = next_seq_id.setdefault(r, 0)
            next_seq_id[r] += 1
            pieces.append((inputs, target))
        seq_ids_t = torch.from_numpy(seq_ids)
        # ours on CPU runs attention over SDPA buckets of n sequences padded to P tokens (model.DocumentMask)
        buckets = DocumentMask(seq_ids_t, "sdpa").buckets.buckets
        lengths = [t.size for _, _, t in chosen]
        layout = Layout(real=sum(lengths), sum_sq=sum(n * n for n in lengths), slots=rows * row_length,
                        pairs=sum(b.n * b.P * b.P for b in buckets))
        steps.append(dict(
            pieces=pieces,
            ours=dict(inputs=dict(input_ids=torch.from_numpy(ids), seq_ids=seq_ids_t, labels=torch.from_numpy(labels)),
                      layout=layout),
            hf=padded_batch(pieces)))
    return steps


def length_bucketed(steps: list[dict], seed: int) -> None:
    """Adds "hf_bucketed" to each step: the steps' masked sequences sorted by length (longest first) and cut into
    padded batches of the steps' own sequence counts, the batches in a seeded random order. This is
    hf_reference.length_grouped_batches with one mega-batch spanning these steps, cut at the steps' sizes so that
    every row sees the same number of steps and sequences per step."""
    pieces = [piece for step in steps for piece in step["pieces"]]
    by_length = sorted(range(len(pieces)), key=lambda i: -pieces[i][0].size)
    batches, first = [], 0
    for step in steps:
        n = len(step["pieces"])
        batches.append(padded_batch([pieces[i] for i in by_length[first:first + n]]))
        first += n
    for step, k in zip(steps, np.random.default_rng(seed).permutation(len(batches))):
        step["hf_bucketed"] = batches[k]


def hf_esm2_8m():
    from transformers import EsmConfig, EsmForMaskedLM
    config = EsmConfig(
        vocab_size=VOCAB_SIZE, pad_token_id=PAD, mask_token_id=MASK, eos_token_id=EOS, intermediate_size=1280,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, max_position_embeddings=1026,
        position_embedding_type="rotary", layer_norm_eps=1e-5, emb_layer_norm_before=False, token_dropout=True,
        tie_word_embeddings=True, **ESM2_8M)
    config._attn_implementation = "sdpa"
    return EsmForMaskedLM(config)


def check_same_matmuls(hf_model, formula: PLM) -> None:
    """The HF rows' FLOPs come from `formula` (ours in esm2 mode): refuse if the shapes that set them differ."""
    hf, ours_c = hf_model.config, formula.config
    pairs = {"hidden_size": (hf.hidden_size, ours_c.hidden_size), "vocab_size": (hf.vocab_size, ours_c.vocab_size),
             "num_hidden_layers": (hf.num_hidden_layers, ours_c.num_hidden_layers),
             "intermediate_size": (hf.intermediate_size, ours_c.intermediate_size)}
    differ = {k: v for k, v in pairs.items() if v[0] != v[1]}
    if differ or ours_c.architecture != "esm2":
        raise ValueError("the HF rows' FLOPs need esm2 mode's formula at the HF shape; differing (HF, ours): "
                         f"{differ}, architecture {ours_c.architecture!r}")


def matmul_peak_gflops(n: int, repeats: int) -> float:
    """This CPU's fp32 matmul rate at torch's current thread count, in GFLOP/s: the fastest of `repeats` (n, n) @
    (n, n) products (2·n³ FLOPs each) after one untimed call. The fastest, not the mean: the peak is what the
    hardware reaches when nothing else runs; load from other processes only slows calls down."""
    a, b, out = torch.randn(n, n), torch.randn(n, n), torch.empty(n, n)
    torch.matmul(a, b, out=out)
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        torch.matmul(a, b, out=out)
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best / 1e9


class Runner:
    """One model + AdamW; `step(step)` runs forward, backward and the optimiser step on the step's `key` batch.
    `formula` is the PLM whose `flops_per_token` counts this model's matmuls."""

    def __init__(self, name: str, model: torch.nn.Module, key: str, formula: PLM, compiled: bool = False):
        self.name, self.key, self.hf = name, key, key.startswith("hf")
        self.n_params = sum(p.numel() for p in model.parameters())
        self.model = model.train()
        self.call = torch.compile(model, dynamic=False) if compiled else model
        self.opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        self.f0 = formula.flops_per_token(0)              # FLOPs per token slot outside attention
        self.k = formula.flops_per_token(1) - self.f0     # attention FLOPs per (query, key) pair (exact: integers)
        self.times: list[float] = []      # wall-clock seconds per timed step
        self.cpu_times: list[float] = []  # process CPU seconds per timed step (all threads)

    def step(self, step: dict) -> float:
        self.opt.zero_grad(set_to_none=True)
        batch = step[self.key]["inputs"]
        if self.hf:
            loss = self.call(**batch).loss
        else:
            loss_sum, n = self.call(**batch)
            loss = loss_sum / n
        loss.backward()
        self.opt.step()
        return loss.item()

    def totals(self, steps: list[dict]) -> dict:
        """Real tokens, slots and FLOPs (useful, computed) of this runner's batches over `steps`."""
        layouts = [s[self.key]["layout"] for s in steps]
        real, slots = sum(x.real for x in layouts), sum(x.slots for x in layouts)
        return dict(real_tokens=real, slots=slots,
                    useful_flops=self.f0 * real + self.k * sum(x.sum_sq for x in layouts),
                    computed_flops=self.f0 * slots + self.k * sum(x.pairs for x in layouts))


def ours(config: ModelConfig) -> PLM:
    model = PLM(config)
    model.init_weights()
    return model


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1, help="packed rows per step (ours); HF gets the same sequences")
    parser.add_argument("--row_length", type=int, default=8192, help="tokens per packed row (train.py: 16384)")
    parser.add_argument("--max_length", type=int, default=1024, help="sequences are cropped to this many tokens")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per model")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per model (compile happens here)")
    parser.add_argument("--peak_size", type=int, default=2048, help="matrix size of the matmul-peak measurement")
    parser.add_argument("--peak_repeats", type=int, default=5, help="timed matmuls per peak measurement")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd variants of ours")
    parser.add_argument("--profile", action="store_true", help="print torch.profiler top ops for one step each")
    parser.add_argument("--smoke", action="store_true", help="tiny run for CI: 1 row of 512, 2 timed steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(harness.RESULTS / "bench_model"), help="writes OUT.md and OUT.json")
    args = parser.parse_args()
    if args.smoke:
        args.rows, args.row_length, args.max_length, args.steps, args.warmup = 1, 512, 256, 2, 1
        args.peak_size, args.peak_repeats = 256, 2
        if args.out == parser.get_default("out"):
            args.out = str(harness.RESULTS / "tmp" / "smoke" / "bench_model")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    info = harness.machine_info()
    print(harness.machine_line(info), flush=True)
    sequences = [r.residues for r in read_fasta(harness.TRAIN_FASTA, limit=2000 if args.smoke else 20000)]
    n_batches = args.steps + args.warmup
    steps = make_steps(sequences, n_batches, args.rows, args.row_length, args.max_length, args.seed)
    # bucketed apart: the timed steps' real tokens stay those of the other rows (warm-up tokens are not timed)
    length_bucketed(steps[:args.warmup], args.seed)
    length_bucketed(steps[args.warmup:], args.seed)
    esm2_formula = PLM(esm2_config(**ESM2_8M))  # FLOP formula of the HF rows (same matmuls; checked below)
    hf_padded, hf_bucketed = hf_esm2_8m(), hf_esm2_8m()
    check_same_matmuls(hf_padded, esm2_formula)
    runners = [Runner(HF_PADDED, hf_padded, "hf", esm2_formula),
               Runner(HF_BUCKETED, hf_bucketed, "hf_bucketed", esm2_formula)]
    for compiled in ([False, True] if args.compile else [False]):
        suffix = ", compiled" if compiled else " (packed)"
        mode, speedrun = ours(esm2_config(**ESM2_8M)), ours(ModelConfig(**SPEEDRUN_8M))
        runners += [Runner(f"ours esm2 mode{suffix}", mode, "ours", mode, compiled=compiled),
                    Runner(f"ours speedrun{suffix}", speedrun, "ours", speedrun, compiled=compiled)]

    timed = steps[args.warmup:]
    totals = {runner.name: runner.totals(timed) for runner in runners}
    if len({t["real_tokens"] for t in totals.values()}) != 1:  # the rows must compare the same work
        raise RuntimeError(f"rows got different real tokens over the timed steps: {totals}")
    real = totals[HF_PADDED]["real_tokens"]
    setup = (f"{args.steps} timed steps of {args.rows}x{args.row_length} packed tokens (sequences cropped to "
             f"{args.max_length}): {real / len(timed):.0f} real tokens and "
             f"{statistics.mean(len(s['pieces']) for s in timed):.1f} sequences per step on average; HF pads them to "
             f"{totals[HF_PADDED]['slots'] / len(timed):.0f} token slots per step as they come, "
             f"{totals[HF_BUCKETED]['slots'] / len(timed):.0f} length-bucketed")
    print(setup, flush=True)

    threads = torch.get_num_threads()
    peak_before = matmul_peak_gflops(args.peak_size, args.peak_repeats)
    print(f"fp32 matmul peak ({args.peak_size}² matmuls, {threads} threads): {peak_before:.1f} GFLOP/s", flush=True)
    for runner in runners:  # warm-up (and compilation), untimed
        start = time.perf_counter()
        for step in steps[:args.warmup]:
            runner.step(step)
        print(f"  warm-up {runner.name}: {time.perf_counter() - start:.1f} s", flush=True)
    for i, step in enumerate(timed):  # interleaved rounds: one step of each model per round
        # the first place of a round rotates: a position effect (e.g. caches after the previous model) hits all alike
        for runner in runners[i % len(runners):] + runners[:i % len(runners)]:
            start, start_cpu = time.perf_counter(), time.process_time()
            runner.step(step)
            runner.times.append(time.perf_counter() - start)
            runner.cpu_times.append(time.process_time() - start_cpu)
    peak_after = matmul_peak_gflops(args.peak_size, args.peak_repeats)
    peak = max(peak_before, peak_after)  # the higher: load from other processes only lowers a measurement
    load_end = os.getloadavg()[0]
    peak_line = (f"fp32 matmul peak: {peak:.1f} GFLOP/s ({args.peak_size}² matmuls at {threads} threads, the models' "
                 f"count; {peak_before:.1f} before the timed rounds, {peak_after:.1f} after)")

    rows = []
    for runner in runners:
        t = totals[runner.name]
        wall, cpu = sum(runner.times), sum(runner.cpu_times)
        rows.append(dict(
            model=runner.name, parameters=runner.n_params, layout=runner.key, wall_s=runner.times,
            cpu_s=runner.cpu_times, median_wall_s=statistics.median(runner.times), **t,
            padding_fraction=1 - t["real_tokens"] / t["slots"],
            real_tokens_per_s=t["real_tokens"] / wall, slot_tokens_per_s=t["slots"] / wall,
            real_tokens_per_cpu_s=t["real_tokens"] / cpu,
            useful_gflop_per_s=t["useful_flops"] / wall / 1e9, computed_gflop_per_s=t["computed_flops"] / wall / 1e9,
            useful_fraction_of_peak=t["useful_flops"] / wall / 1e9 / peak,
            computed_fraction_of_peak=t["computed_flops"] / wall / 1e9 / peak))
    for row in rows:  # ratios to the two HF rows of this run
        for ref, tag in ((rows[0], "vs_hf"), (rows[1], "vs_hf_bucketed")):
            row[tag] = row["real_tokens_per_s"] / ref["real_tokens_per_s"]
            row[tag + "_cpu"] = row["real_tokens_per_cpu_s"] / ref["real_tokens_per_cpu_s"]

    def shown(row: dict) -> dict:  # table cells: ratios as 1.23x, fractions as percentages, GFLOP per step
        return {**row, **{k: f"{row[k]:.2f}x" for k in ("vs_hf", "vs_hf_bucketed", "vs_hf_cpu")},
                "padding": f"{row['padding_fraction']:.0%}",
                "useful_pct": f"{row['useful_fraction_of_peak']:.0%}",
                "computed_pct": f"{row['computed_fraction_of_peak']:.0%}",
                "useful_gflop_per_step": row["useful_flops"] / len(timed) / 1e9,
                "computed_gflop_per_step": row["computed_flops"] / len(timed) / 1e9}

    speed = harness.fmt_table([shown(r) for r in rows], [
        ("model", "model"), ("parameters", "parameters"), ("median_wall_s", "median wall s/step"),
        ("padding", "padding"), ("real_tokens_per_s", "real tokens/s (wall)"),
        ("slot_tokens_per_s", "slot tokens/s (wall)"), ("vs_hf", "vs HF padded"),
        ("vs_hf_bucketed", "vs HF bucketed"), ("real_tokens_per_cpu_s", "real tokens per CPU-s"),
        ("vs_hf_cpu", "vs HF padded (CPU)")])
    flops = harness.fmt_table([shown(r) for r in rows], [
        ("model", "model"), ("useful_gflop_per_step", "useful GFLOP/step"),
        ("computed_gflop_per_step", "computed GFLOP/step"), ("useful_gflop_per_s", "useful GFLOP/s"),
        ("useful_pct", "MFU: useful / peak"), ("computed_gflop_per_s", "computed GFLOP/s"),
        ("computed_pct", "computed / peak")])
    notes = (f"load average at the end {load_end:.2f}; wall = elapsed time, CPU = process CPU time (all threads; "
             f"the steadier measure when other processes share the cores); padding = 1 - real tokens / slots")
    print(f"\n{peak_line}\n{notes}\n\n{speed}\n\n{flops}")
    out = Path(args.out)
    harness.write_json(out.with_suffix(".json"), {
        "machine": info, "args": vars(args), "setup": setup, "loadavg_at_end": load_end,
        "matmul_peak": {"gflop_per_s": peak, "before": peak_before, "after": peak_after, "threads": threads,
                        "matrix_size": args.peak_size, "repeats": args.peak_repeats},
        "flop_counting": "PLM.flops_per_token (matmuls, training = 3 x forward), f(S) = f0 + k*S; useful = "
                         "f0*real_tokens + k*sum(L^2); computed = f0*slots + k*attention pairs computed (HF: B*T^2, "
                         "ours: sum n*P^2 over SDPA buckets); HF rows use esm2 mode's formula",
        "rows": rows})
    out.with_suffix(".md").write_text(f"{harness.machine_line(info)}\n{setup}\n{peak_line}\n{notes}\n\n"
                                      f"{speed}\n\n{flops}\n")
    print(f"wrote {out}.md/.json")

    if args.profile:
        from torch.profiler import ProfilerActivity, profile
        for runner in runners:
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                runner.step(timed[0])
            print(f"\n### {runner.name}: one step, top ops by self CPU time")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=48))


if __name__ == "__main__":
    main()
