"""Training-step throughput on this machine's CPU: model.py vs Hugging Face `EsmForMaskedLM`, same sequences.

Every model trains on the same steps: real Swiss-Prot sequences (sp50_train, `<cls> residues <eos>` cropped to
`--row_length` tokens), 15% of residues replaced by `<mask>`, one fp32 forward + backward + AdamW step.
- HF `EsmForMaskedLM` at the ESM2-8M shape (6 layers, hidden 320, 20 heads, MLP 1280; built from an `EsmConfig`,
  nothing downloaded; `attn_implementation="sdpa"`, HF's fastest on CPU) gets each step's sequences as one padded
  batch with an attention mask: how practitioners run it.
- Ours gets the same sequences packed into `--rows` rows of `--row_length` tokens (next-fit, in order), with
  document masking: `esm2` mode (the HF architecture inside model.py: isolates packing + attention) and the
  `speedrun` architecture at about the same parameter count (hidden 320, 5 heads of 64, 6 layers, MLP 1280).
Throughput counts real tokens (residues and specials, never padding) per second of step time. Models are timed
in interleaved rounds (one step of each, repeated) so that load from other processes hits all of them alike;
ratios are against HF measured in the same run.

    python benchmarks/bench_model.py                 # the table in docs/MODEL.md (~3 min on 2 idle cores)
    python benchmarks/bench_model.py --compile       # + torch.compile'd variants of ours (adds compile time)
    python benchmarks/bench_model.py --profile       # + torch.profiler top ops of one step per model
    python benchmarks/bench_model.py --smoke         # a few seconds: CI checks that it runs
"""
import argparse
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
from model import PLM, ModelConfig, esm2_config  # noqa: E402
from vocab import CLS, EOS, MASK, PAD, VOCAB_SIZE, encode_with_specials  # noqa: E402

ESM2_8M = dict(hidden_size=320, num_attention_heads=20, num_hidden_layers=6)  # facebook/esm2_t6_8M_UR50D
SPEEDRUN_8M = dict(hidden_size=320, num_attention_heads=5, num_hidden_layers=6, expansion_ratio=4.0,
                   value_embeddings=2)


def make_steps(sequences: list[str], n_steps: int, rows: int, row_length: int, max_length: int,
               seed: int) -> list[dict]:
    """Per step: the sequences (cropped to max_length) that fill `rows` packed rows in next-fit order, as dataloader.py
    packs them, as a packed batch (ours) and as one padded batch (HF)."""
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
        longest = max(t.size for _, _, t in chosen)
        hf_ids = np.full((len(chosen), longest), PAD, dtype=np.int64)
        hf_labels = np.full((len(chosen), longest), -100, dtype=np.int64)
        hf_attention = np.zeros((len(chosen), longest), dtype=np.int64)
        next_seq_id = {}
        for i, (r, start, tokens) in enumerate(chosen):
            residue = (tokens != CLS) & (tokens != EOS)
            masked = residue & (rng.random(tokens.size) < 0.15)
            inputs = np.where(masked, MASK, tokens)
            target = np.where(masked, tokens, -100)
            sl = slice(start, start + tokens.size)
            ids[r, sl], labels[r, sl] = inputs, target
            seq_ids[r, sl] = next_seq_id.setdefault(r, 0)
            next_seq_id[r] += 1
            hf_ids[i, :tokens.size], hf_labels[i, :tokens.size], hf_attention[i, :tokens.size] = inputs, target, 1
        steps.append(dict(
            real_tokens=int(sum(t.size for _, _, t in chosen)), n_sequences=len(chosen),
            ours=dict(input_ids=torch.from_numpy(ids), seq_ids=torch.from_numpy(seq_ids),
                      labels=torch.from_numpy(labels)),
            hf=dict(input_ids=torch.from_numpy(hf_ids), attention_mask=torch.from_numpy(hf_attention),
                    labels=torch.from_numpy(hf_labels))))
    return steps


def hf_esm2_8m():
    from transformers import EsmConfig, EsmForMaskedLM
    config = EsmConfig(
        vocab_size=VOCAB_SIZE, pad_token_id=PAD, mask_token_id=MASK, eos_token_id=EOS, intermediate_size=1280,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, max_position_embeddings=1026,
        position_embedding_type="rotary", layer_norm_eps=1e-5, emb_layer_norm_before=False, token_dropout=True,
        tie_word_embeddings=True, **ESM2_8M)
    config._attn_implementation = "sdpa"
    return EsmForMaskedLM(config)


class Runner:
    """One model + AdamW; `step(batch)` runs forward, backward and the optimiser step."""

    def __init__(self, name: str, model: torch.nn.Module, hf: bool, compiled: bool = False):
        self.name, self.hf = name, hf
        self.n_params = sum(p.numel() for p in model.parameters())
        self.model = model.train()
        self.call = torch.compile(model, dynamic=False) if compiled else model
        self.opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        self.times: list[float] = []      # wall-clock seconds per timed step
        self.cpu_times: list[float] = []  # process CPU seconds per timed step (all threads)

    def step(self, step: dict) -> float:
        self.opt.zero_grad(set_to_none=True)
        if self.hf:
            loss = self.call(**step["hf"]).loss
        else:
            loss_sum, n = self.call(**step["ours"])
            loss = loss_sum / n
        loss.backward()
        self.opt.step()
        return loss.item()


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
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd variants of ours")
    parser.add_argument("--profile", action="store_true", help="print torch.profiler top ops for one step each")
    parser.add_argument("--smoke", action="store_true", help="tiny run for CI: 1 row of 512, 1 timed step")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(harness.RESULTS / "bench_model"), help="writes OUT.md and OUT.json")
    args = parser.parse_args()
    if args.smoke:
        args.rows, args.row_length, args.max_length, args.steps, args.warmup = 1, 512, 256, 1, 1
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
    runners = [Runner("HF EsmForMaskedLM (sdpa, padded)", hf_esm2_8m(), hf=True),
               Runner("ours esm2 mode (packed)", ours(esm2_config(**ESM2_8M)), hf=False),
               Runner("ours speedrun (packed)", ours(ModelConfig(**SPEEDRUN_8M)), hf=False)]
    if args.compile:
        runners += [Runner("ours esm2 mode, compiled", ours(esm2_config(**ESM2_8M)), hf=False, compiled=True),
                    Runner("ours speedrun, compiled", ours(ModelConfig(**SPEEDRUN_8M)), hf=False, compiled=True)]

    slots_hf = [s["hf"]["input_ids"].numel() for s in steps]
    print(f"{n_batches} steps of {args.rows}x{args.row_length} packed tokens, sequences cropped to {args.max_length}: "
          f"{statistics.mean(s['real_tokens'] for s in steps):.0f} real tokens and "
          f"{statistics.mean(s['n_sequences'] for s in steps):.1f} sequences per step on average; "
          f"HF pads them to {statistics.mean(slots_hf):.0f} token slots per step")

    for runner in runners:  # warm-up (and compilation), untimed
        start = time.perf_counter()
        for step in steps[:args.warmup]:
            runner.step(step)
        print(f"  warm-up {runner.name}: {time.perf_counter() - start:.1f} s")
    for i in range(args.warmup, n_batches):  # interleaved rounds: one step of each model per round
        for runner in runners:
            start, start_cpu = time.perf_counter(), time.process_time()
            runner.step(steps[i])
            runner.times.append(time.perf_counter() - start)
            runner.cpu_times.append(time.process_time() - start_cpu)

    timed = steps[args.warmup:]
    real = sum(s["real_tokens"] for s in timed)
    base, base_cpu = real / sum(runners[0].times), real / sum(runners[0].cpu_times)
    print(f"\nload average at the end {os.getloadavg()[0]:.2f}; wall = elapsed time, CPU = process CPU time "
          f"(all threads; the steadier measure when other processes share the cores)\n")
    lines = ["| model | parameters | median wall s/step | real tokens/s (wall) | vs HF | real tokens per CPU-s | vs HF |",
             "|---|---|---|---|---|---|---|"]
    rows = []
    for runner in runners:
        tps, tpc = real / sum(runner.times), real / sum(runner.cpu_times)
        lines.append(f"| {runner.name} | {runner.n_params:,} | {statistics.median(runner.times):.2f} | {tps:,.0f} | "
                     f"{tps / base:.2f}x | {tpc:,.0f} | {tpc / base_cpu:.2f}x |")
        rows.append(dict(model=runner.name, parameters=runner.n_params, wall_s=runner.times, cpu_s=runner.cpu_times,
                         tokens_per_s=tps, vs_hf=tps / base, tokens_per_cpu_s=tpc, vs_hf_cpu=tpc / base_cpu))
    table = "\n".join(lines)
    print(table)
    setup = (f"{args.steps} timed steps of {args.rows}x{args.row_length} packed tokens (sequences cropped to "
             f"{args.max_length}), {real / len(timed):.0f} real tokens per step, HF padded to "
             f"{statistics.mean(slots_hf):.0f} slots; load average at the end {os.getloadavg()[0]:.2f}")
    out = Path(args.out)
    harness.write_json(out.with_suffix(".json"), {"machine": info, "args": vars(args), "rows": rows})
    out.with_suffix(".md").write_text(f"{harness.machine_line(info)}\n{setup}\n\n{table}\n")
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
