"""The reference implementation: what most pLM practitioners would train with, in one small loop.

Hugging Face `transformers` `EsmForMaskedLM` (built from an `EsmConfig` with the released ESM2 settings: rotary
positions, pre-LN, GELU, token dropout, no dropout, tied head; nothing downloaded), torch `AdamW` with the ESM2
settings (betas 0.9/0.98, eps 1e-8, weight decay 0.01), gradient clipping at 1.0 (the HF `Trainer` default),
15% BERT masking with 80/10/10 corruption, padded batches of whole sequences (randomly cropped to max_length,
as ESM2 does), linear warm-up then linear decay to 10% of the peak LR (the ESM2 schedule).

Batches are length-grouped by default (`--group_by_length true`), as `transformers.Trainer(group_by_length=True)`
does for its users (its `LengthGroupedSampler`): a seeded random mega-batch of 50 × batch_sequences sequences is
sorted by length and cut into batches, so each padded batch holds sequences of similar length; the batch order
inside a mega-batch is then shuffled (HF leaves it longest first), so that the step-to-step order stays random.
It is the default because it is what a practitioner gets by setting one flag, and the benchmarks compare against a
fairly run reference: with random batches about 35% of the computed token slots are padding (issue 12, item 3).
`--group_by_length false` restores the plain random order of whole sequences (the reference of the runs recorded
before issue 12). `padding_fraction` in the run record says which one a run had.

Like train.py on CPU, it computes with subnormal floats flushed to zero (`distributed.flush_subnormals`; before
session 19 neither did), so that neither program pays this CPU's microcode path for them.

One deliberate kindness to the baseline: the schedule's progress is *training time / budget*, like ours, so its
LR reaches its floor exactly when the budget ends (a practitioner would have to guess a step count).

The clock covers data preparation, masking, forward, backward and the optimizer step; validation stops it. The run
record has the fields of train.py's JSON summary that the benchmarks read (`val`, `tokens_per_s`, `n_params`,
`final_val_loss`, …); tokens count real residues and specials, never padding.

    python benchmarks/hf_reference.py --data_dir D --data_name sp50 --budget_s 210 --lr 1e-3 --output run.json
"""
import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402  (also puts the repository root on sys.path)
import config  # noqa: E402
import controls  # noqa: E402
import distributed  # noqa: E402
import provenance  # noqa: E402
import runlog  # noqa: E402
from shards import find_shards  # noqa: E402
from validation import shard_sequences  # noqa: E402
from vocab import CLS, EOS, MASK, PAD, STANDARD_AA_IDS, VOCAB_SIZE  # noqa: E402


def build_model(hidden_size: int, num_layers: int, num_heads: int, max_length: int):
    """EsmForMaskedLM with the facebook/esm2_t6_8M_UR50D settings, at the given size (4x MLP)."""
    from transformers import EsmConfig, EsmForMaskedLM

    config = EsmConfig(
        vocab_size=VOCAB_SIZE, mask_token_id=MASK, pad_token_id=PAD, eos_token_id=EOS,
        hidden_size=hidden_size, num_hidden_layers=num_layers, num_attention_heads=num_heads,
        intermediate_size=4 * hidden_size, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        max_position_embeddings=max_length + 2, position_embedding_type="rotary", layer_norm_eps=1e-5,
        emb_layer_norm_before=False, token_dropout=True, tie_word_embeddings=True,
    )
    config._attn_implementation = "sdpa"  # the fastest attention HF offers on CPU (the eager path is slower)
    return EsmForMaskedLM(config)  # HF's own initialisation (normal, std 0.02), seeded by the caller


def bert_mask(tokens: np.ndarray, rng: np.random.Generator, rate: float = 0.15):
    """BERT masking as in HF DataCollatorForLanguageModeling: each residue chosen with probability `rate`;
    chosen ones become <mask> (80%), a random standard amino acid (10%) or stay (10%). -> (inputs, labels)."""
    maskable = (tokens != CLS) & (tokens != EOS) & (tokens != PAD)
    chosen = maskable & (rng.random(tokens.shape) < rate)
    labels = np.where(chosen, tokens.astype(np.int64), -100)
    inputs = tokens.astype(np.int64)
    roll = rng.random(tokens.shape)
    inputs[chosen & (roll < 0.8)] = MASK
    randomize = chosen & (roll >= 0.8) & (roll < 0.9)
    inputs[randomize] = rng.choice(STANDARD_AA_IDS, size=int(randomize.sum()))
    return inputs, labels


# Sequences sorted together = 50 × batch_sequences: transformers' LengthGroupedSampler default (it lowers the factor
# only for data sets of fewer than 200 batches; sp50_train is far larger).
MEGABATCH_MULT = 50


def length_grouped_batches(lengths, batch_sequences: int, seed: int, epoch: int,
                           megabatch_mult: int = MEGABATCH_MULT) -> list[np.ndarray]:
    """One epoch of length-grouped batches: lists of sequence indices, each index exactly once.

    A pure function of (lengths, batch_sequences, seed, epoch), like transformers' `get_length_grouped_indices`:
    a random permutation is cut into mega-batches of megabatch_mult × batch_sequences indices, each mega-batch is
    sorted by length (longest first) and cut into batches of batch_sequences, and the batches of a mega-batch are
    shuffled. The last batch of a mega-batch (hence of the epoch) may be smaller, as HF's without drop_last.
    lengths: tokens per sequence as the batch will hold it (after cropping)."""
    lengths = np.asarray(lengths)
    rng = np.random.default_rng([seed, epoch])  # its own stream per epoch: the order never depends on masking draws
    order = rng.permutation(lengths.size)
    size = megabatch_mult * batch_sequences
    batches = []
    for first in range(0, order.size, size):
        mega = order[first:first + size]
        mega = mega[np.argsort(-lengths[mega], kind="stable")]
        cut = [mega[i:i + batch_sequences] for i in range(0, mega.size, batch_sequences)]
        batches += [cut[i] for i in rng.permutation(len(cut))]
    return batches


class PaddedBatches:
    """Padded batches of whole sequences, each cropped to a random max_length window.

    group_by_length=False: a seeded shuffle of the sequences, reshuffled each epoch (a batch may span two epochs).
    group_by_length=True: the epochs of `length_grouped_batches` (the default of hf_reference.py, see its docstring).
    Crops and masks are drawn from one generator seeded with `seed`."""

    def __init__(self, seqs, batch_sequences: int, max_length: int, seed: int, group_by_length: bool):
        self.seqs, self.bs, self.max_length = seqs, batch_sequences, max_length
        self.seed, self.group_by_length = seed, group_by_length
        self.rng = np.random.default_rng(seed)
        self.pos, self.epoch = 0, 0
        if group_by_length:
            self.cropped_lengths = np.minimum([len(s) for s in seqs], max_length)
            self.batches = length_grouped_batches(self.cropped_lengths, batch_sequences, seed, 0)
        else:
            self.order = self.rng.permutation(len(seqs))

    def next_indices(self) -> list[int]:
        """The indices of the next batch's sequences, starting a new epoch when the current one is used up."""
        if self.group_by_length:
            if self.pos == len(self.batches):
                self.epoch, self.pos = self.epoch + 1, 0
                self.batches = length_grouped_batches(self.cropped_lengths, self.bs, self.seed, self.epoch)
            self.pos += 1
            return self.batches[self.pos - 1].tolist()
        picked = []
        while len(picked) < self.bs:
            if self.pos == len(self.order):
                self.order, self.pos, self.epoch = self.rng.permutation(len(self.seqs)), 0, self.epoch + 1
            picked.append(int(self.order[self.pos]))
            self.pos += 1
        return picked

    def next(self):
        """-> (input_ids (B, T), labels (B, T), attention_mask (B, T), number of real tokens)."""
        picked = []
        for i in self.next_indices():
            seq = self.seqs[i]
            if len(seq) > self.max_length:
                start = self.rng.integers(0, len(seq) - self.max_length + 1)
                seq = seq[start:start + self.max_length]
            picked.append(seq)
        t = max(len(s) for s in picked)
        tokens = np.full((len(picked), t), PAD, dtype=np.uint8)
        for r, s in enumerate(picked):
            tokens[r, :len(s)] = s
        inputs, labels = bert_mask(tokens, self.rng)
        attention = tokens != PAD
        return (torch.from_numpy(inputs), torch.from_numpy(labels), torch.from_numpy(attention).long(),
                int(attention.sum()))


def lr_at(progress: float, peak: float, warmup_fraction: float, floor: float = 0.1) -> float:
    """ESM2 schedule on time progress in [0, 1]: linear warm-up, then linear decay to floor·peak at the end."""
    if progress < warmup_fraction:
        return peak * progress / warmup_fraction
    frac = min(1.0, (progress - warmup_fraction) / max(1e-9, 1 - warmup_fraction))
    return peak * (1 - (1 - floor) * frac)


def true_or_false(word: str) -> bool:
    """A typed boolean flag read by config.py's rule, as train.py's are: `--group_by_length false` means false
    (argparse's type=bool would read any non-empty word as true); anything else is an error naming the value."""
    return config.convert("group_by_length", word, bool)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_dir", required=True)
    p.add_argument("--data_name", default="sp50")
    p.add_argument("--hidden_size", type=int, default=64)
    p.add_argument("--num_hidden_layers", type=int, default=4)
    p.add_argument("--num_attention_heads", type=int, default=4)
    p.add_argument("--max_length", type=int, default=512, help="tokens per sequence after cropping")
    p.add_argument("--batch_sequences", type=int, default=16, help="sequences per step (padded batch)")
    p.add_argument("--group_by_length", type=true_or_false, default=True,
                   help="true (default): length-grouped batches, as Trainer(group_by_length=True); false: random order")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    p.add_argument("--warmup_fraction", type=float, default=0.05, help="of the time budget")
    p.add_argument("--budget_s", type=float, required=True, help="training-time budget in seconds")
    p.add_argument("--eval_every_s", type=float, default=30.0, help="validate every this much training time")
    p.add_argument("--seed", type=int, default=0, help="initial weights, data order and training masks")
    p.add_argument("--val_mask_seed", type=int, default=0, help="seed of the fixed validation masks (harness.py)")
    p.add_argument("--controls", type=true_or_false, default=True,
                   help="true (default): score train.py's no-learning controls on the same masked positions, so "
                        "benchmarks/compare_runs.py can put this run beside train.py runs")
    p.add_argument("--output", required=True, help="JSON run record")
    args = p.parse_args(argv)
    since, git = provenance.start(), runlog.git_state()
    subnormals_flushed = distributed.flush_subnormals()  # as train.py on CPU; before any op starts a thread pool

    torch.manual_seed(args.seed)
    model = build_model(args.hidden_size, args.num_hidden_layers, args.num_attention_heads, args.max_length)
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.98), eps=1e-8, weight_decay=0.01)

    train = PaddedBatches(shard_sequences(args.data_dir, args.data_name, "train"), args.batch_sequences,
                          args.max_length, args.seed, args.group_by_length)
    val_batches = harness.validation_batches(args.data_dir, args.data_name, args.val_mask_seed)
    control_losses = None
    if args.controls:  # the same fit and scoring as train.py's, before the clock starts
        control_model = controls.fit_controls(find_shards(args.data_dir, args.data_name, "train"),
                                              harness.VAL_MASK_RATE)
        sums = control_model.score(controls.rows_to_sequences(val_batches))
        control_losses = controls.summarise(sums)
        print(controls.describe(control_losses, control_model), flush=True)

    def hf_logits(input_ids, seq_ids):  # the padded layout: seq_ids is -1 exactly on padding
        return model(input_ids=input_ids, attention_mask=(seq_ids >= 0).long()).logits

    def validate():
        model.eval()
        loss = harness.validation_loss(hf_logits, val_batches)
        model.train()
        return loss

    # Untimed warm-up, as train.py does for its compilation: two real steps (first-call allocations), then the
    # initial weights, a fresh optimizer and a fresh data stream are restored, so they do not count as training.
    initial_state = {k: v.clone() for k, v in model.state_dict().items()}
    for _ in range(2):
        inputs, labels, attention, _ = train.next()
        model(input_ids=inputs, attention_mask=attention, labels=labels).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    model.load_state_dict(initial_state)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.98), eps=1e-8, weight_decay=0.01)
    train = PaddedBatches(train.seqs, args.batch_sequences, args.max_length, args.seed, args.group_by_length)

    val, step, tokens, padded, masked, train_time = [], 0, 0, 0, 0, 0.0
    next_eval = 0.0
    order = "length-grouped" if args.group_by_length else "random order"
    print(f"hf_reference: {n_params:,} parameters, lr {args.lr}, warm-up {args.warmup_fraction}, "
          f"batch {args.batch_sequences} sequences ({order}), budget {args.budget_s:.0f} s", flush=True)
    model.train()
    while True:
        if train_time >= next_eval or train_time >= args.budget_s:  # validation: clock stopped
            loss = validate()
            val.append({"step": step, "tokens": tokens, "train_time_s": train_time, "loss": loss})
            print(f"step {step} tokens {tokens} train_time {train_time:.1f}s val_loss {loss:.4f}", flush=True)
            next_eval = (math.floor(train_time / args.eval_every_s) + 1) * args.eval_every_s
            if not math.isfinite(loss):
                break
        if train_time >= args.budget_s:
            break
        t0 = time.perf_counter()
        lr = lr_at(train_time / args.budget_s, args.lr, args.warmup_fraction)
        for group in opt.param_groups:
            group["lr"] = lr
        inputs, labels, attention, n_real = train.next()
        loss = model(input_ids=inputs, attention_mask=attention, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        loss_value = loss.item()  # a sync point; on CPU everything is synchronous anyway
        train_time += time.perf_counter() - t0
        step += 1
        tokens += n_real
        padded += inputs.numel()
        masked += int((labels != -100).sum())
        if not math.isfinite(loss_value):
            print(f"non-finite training loss at step {step}", flush=True)
            val.append({"step": step, "tokens": tokens, "train_time_s": train_time, "loss": float("nan")})
            break

    # the training corruption, in train.py's keys (compare_runs.py reads them): BERT 15% with 80/10/10
    run_config = vars(args) | {"mask_rate": 0.15, "bert_corruption": True}
    record = {
        "run_id": Path(args.output).stem, "recipe": "hf_reference", "config": run_config, "n_params": n_params,
        "subnormals_flushed": subnormals_flushed, "steps": step, "tokens": tokens, "train_time_s": train_time,
        "tokens_per_s": tokens / max(train_time, 1e-9), "padding_fraction": 1 - tokens / max(padded, 1),
        "epochs_started": train.epoch + 1, "val": val, "final_val_loss": val[-1]["loss"],
        "controls": control_losses, "world_size": 1, "loader": {"masked_tokens": masked, "real_tokens": tokens},
        "git": git, "provenance": {"machine": provenance.machine_usage(since),
                                   "hardware": provenance.hardware(torch.device("cpu"), 1)},
        "status": "ok" if math.isfinite(val[-1]["loss"]) else "diverged",
    }
    harness.write_json(Path(args.output), record)
    print(f"final val loss {record['final_val_loss']:.4f}, {record['tokens_per_s']:.0f} tokens/s, "
          f"padding {record['padding_fraction']:.0%}", flush=True)


if __name__ == "__main__":
    main()
