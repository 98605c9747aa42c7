"""The one fixed-mask MLM evaluation, used by train.py, evaluate.py and benchmarks/.

    sequences: `<cls> … <eos>` token arrays (shard_sequences reads a split of .bin shards)
      │  mask_sequence = fixed_mask + <mask>: the same masked positions for every model, batch split and rank
      ▼
    packed_batches  side by side in rows, exactly like training rows (seq_ids 0, 1, … per row): our model
    padded_batches  one sequence per row, grouped by length_batches: a model that takes an attention mask
      │             (the Hugging Face reference), through a logits_fn that reads `seq_ids >= 0` as that mask
      ▼
    batches {input_ids, labels, seq_ids} ──mlm_metrics(logits_fn)──▶ loss per masked token, accuracy (and the
                                                                     confusion matrix), summed in float64 over
                                                                     batches and ranks

`load_validation_batches` (shard_sequences → crop → packed_batches) is what train.py validates on.
"""
import hashlib
import math

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from dataloader import IGNORE, check_shards, pack_greedy, scan_sequences, to_device
from shards import find_shards, read_shard
from vocab import CLS, EOS, MASK, PAD, VOCAB_SIZE


def fixed_mask(tokens: np.ndarray, rate: float, seed: int) -> np.ndarray:
    """The evaluation mask of one sequence: a pure function of (seed, the sequence's tokens, rate).

    Exactly max(1, round(rate · n)) of the n maskable positions (everything but <cls>, <eos>, <pad>) are chosen,
    without replacement, by a generator seeded from the seed and a hash of the tokens. So every model, every
    batch size and every number of ranks scores the same positions. Returns a bool array shaped like `tokens`.
    """
    tokens = np.asarray(tokens, dtype=np.uint8)
    maskable = np.flatnonzero((tokens != CLS) & (tokens != EOS) & (tokens != PAD))
    out = np.zeros(tokens.shape, dtype=bool)
    if maskable.size == 0:
        return out
    digest = hashlib.sha256(tokens.tobytes()).digest()
    rng = np.random.default_rng([seed, int.from_bytes(digest[:8], "little")])
    n_mask = max(1, int(round(rate * maskable.size)))
    out[rng.choice(maskable, size=n_mask, replace=False)] = True
    return out


def mask_sequence(tokens: np.ndarray, rate: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, labels) of one sequence, both int64 shaped like `tokens`: every `fixed_mask` position becomes
    <mask> (no 80/10/10: the ESM2 evaluation protocol) and keeps its token as label; labels are IGNORE elsewhere."""
    mask = fixed_mask(tokens, rate, seed)
    input_ids = np.asarray(tokens).astype(np.int64)
    labels = np.where(mask, input_ids, IGNORE)
    input_ids[mask] = MASK
    return input_ids, labels


def length_batches(lengths, batch_tokens: int) -> list[list[int]]:
    """Indices grouped longest first so that each group, padded to its longest member, holds <= batch_tokens.

    An item longer than batch_tokens gets a group of its own."""
    lengths = np.asarray(lengths)
    batches, current, width = [], [], 0
    for i in np.argsort(-lengths, kind="stable").tolist():
        if current and (len(current) + 1) * width > batch_tokens:
            batches.append(current)
            current = []
        if not current:
            width = int(lengths[i])
        current.append(i)
    if current:
        batches.append(current)
    return batches


def shard_sequences(data_dir, data_name: str, split: str) -> list[np.ndarray]:
    """Every `<cls> … <eos>` sequence of `{data_dir}/{data_name}_{split}_*.bin`, in file order, as uint8 arrays.

    Headers are checked (`dataloader.check_shards`) and bodies split by `dataloader.scan_sequences`, so a broken
    shard raises ShardError naming the file; no shard at all raises FileNotFoundError naming the glob."""
    paths = find_shards(data_dir, data_name, split)
    check_shards(paths)
    out = []
    for path in paths:
        body = read_shard(path, mmap=False)
        starts, lengths = scan_sequences(body, path)
        out += [body[start:start + length] for start, length in zip(starts.tolist(), lengths.tolist())]
    return out


class ValidationBatches(list):
    """This rank's validation micro-batches (a list of batch dicts) with `.stats` describing the whole set."""

    def __init__(self, batches: list[dict], stats: dict):
        super().__init__(batches)
        self.stats = stats


def packed_batches(sequences: list[np.ndarray], *, row_length: int, mask_rate: float = 0.15, seed: int = 0,
                   world_size: int = 1, rank: int = 0, rows_per_batch: int = 1) -> ValidationBatches:
    """The sequences (each <= row_length tokens), masked by `mask_sequence`, packed in the given order side by side
    into rows of row_length tokens (next-fit, `dataloader.pack_greedy`, as training rows are packed).

    Row i goes to rank i % world_size; each rank gets the same number of batches of rows_per_batch rows, topped up
    with all-<pad> rows (no label), so shapes are fixed (one compile) and the masked-token count summed over ranks
    is the same for any world size. Batches hold input_ids, labels (int64) and seq_ids (int32: 0, 1, … per row,
    -1 on padding), each (rows_per_batch, row_length).
    stats: sequences, rows, real_tokens, masked_tokens (whole set), rank_rows, rank_masked_tokens.
    """
    if min(rows_per_batch, world_size) < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need rows_per_batch >= 1 and 0 <= rank < world_size, got rows_per_batch={rows_per_batch}, "
                         f"rank={rank}, world_size={world_size}")
    if not sequences:
        raise ValueError("no sequences to evaluate")
    row, offset, _ = pack_greedy(np.array([t.size for t in sequences], dtype=np.int64), 0, row_length)
    n_rows = int(row[-1]) + 1
    index_in_row = np.arange(row.size) - np.searchsorted(row, row, side="left")
    input_ids = np.full((n_rows, row_length), PAD, dtype=np.int64)
    labels = np.full((n_rows, row_length), IGNORE, dtype=np.int64)
    seq_ids = np.full((n_rows, row_length), -1, dtype=np.int32)
    for tokens, r, start, k in zip(sequences, row.tolist(), offset.tolist(), index_in_row.tolist()):
        span = slice(start, start + tokens.size)
        input_ids[r, span], labels[r, span] = mask_sequence(tokens, mask_rate, seed)
        seq_ids[r, span] = k

    mine = np.arange(rank, n_rows, world_size)
    per_rank = -(-n_rows // world_size)
    n_batches = -(-per_rank // rows_per_batch)
    padded = n_batches * rows_per_batch

    def rank_rows(array: np.ndarray, fill_value: int) -> np.ndarray:
        out = np.full((padded, row_length), fill_value, dtype=array.dtype)
        out[:mine.size] = array[mine]
        return out.reshape(n_batches, rows_per_batch, row_length)

    rank_input, rank_labels, rank_seq = rank_rows(input_ids, PAD), rank_rows(labels, IGNORE), rank_rows(seq_ids, -1)
    batches = [{"input_ids": torch.from_numpy(rank_input[b]), "labels": torch.from_numpy(rank_labels[b]),
                "seq_ids": torch.from_numpy(rank_seq[b])} for b in range(n_batches)]
    stats = {"sequences": len(sequences), "rows": n_rows, "real_tokens": int(sum(t.size for t in sequences)),
             "masked_tokens": int(np.count_nonzero(labels != IGNORE)), "rank_rows": int(mine.size),
             "rank_masked_tokens": int(np.count_nonzero(rank_labels != IGNORE))}
    return ValidationBatches(batches, stats)


def padded_batches(sequences: list[np.ndarray], *, mask_rate: float = 0.15, seed: int = 0,
                   batch_tokens: int = 16384) -> list[dict]:
    """The sequences, masked by `mask_sequence`, one per row, in `length_batches` groups of about batch_tokens
    padded tokens, each batch as wide as its longest sequence.

    The layout of a model that takes an attention mask (benchmarks/hf_reference.py). seq_ids is 0 on a sequence's
    tokens and -1 on padding, so `seq_ids >= 0` is the attention mask, and our own model reads the same batches.
    """
    batches = []
    for group in length_batches([t.size for t in sequences], batch_tokens):
        width = sequences[group[0]].size  # the longest of the group comes first
        input_ids = torch.full((len(group), width), PAD, dtype=torch.int64)
        labels = torch.full((len(group), width), IGNORE, dtype=torch.int64)
        seq_ids = torch.full((len(group), width), -1, dtype=torch.int32)
        for r, i in enumerate(group):
            ids, targets = mask_sequence(sequences[i], mask_rate, seed)
            input_ids[r, :ids.size], labels[r, :ids.size] = torch.from_numpy(ids), torch.from_numpy(targets)
            seq_ids[r, :ids.size] = 0
        batches.append({"input_ids": input_ids, "labels": labels, "seq_ids": seq_ids})
    return batches


def load_validation_batches(data_dir, data_name: str, split: str, *, row_length: int, max_length: int,
                            mask_rate: float = 0.15, seed: int = 0, world_size: int = 1, rank: int = 0,
                            rows_per_batch: int = 1) -> ValidationBatches:
    """Every sequence of `{data_dir}/{data_name}_{split}_*.bin`, in file order, cropped to its first max_length
    tokens (counted in stats['cropped']), then `packed_batches` (see there for ranks, shapes and stats)."""
    if not 1 <= max_length <= row_length:
        raise ValueError(f"need 1 <= max_length={max_length} <= row_length={row_length}")
    sequences = shard_sequences(data_dir, data_name, split)
    batches = packed_batches([t[:max_length] for t in sequences], row_length=row_length, mask_rate=mask_rate,
                             seed=seed, world_size=world_size, rank=rank, rows_per_batch=rows_per_batch)
    batches.stats["cropped"] = sum(t.size > max_length for t in sequences)
    return batches


@torch.no_grad()
def mlm_metrics(logits_fn, batches, device, autocast, *, confusion: bool = False) -> dict:
    """Loss per masked token, perplexity and accuracy over this rank's share of the fixed-mask batches, summed over
    ranks (so any number of ranks gives the same numbers). logits_fn(input_ids, seq_ids) -> (R, T, V) logits.

    confusion=True adds "confusion": the (VOCAB_SIZE, VOCAB_SIZE) int64 numpy counts of (true, predicted) over
    the masked tokens (row = true token, column = argmax), for metrics beyond accuracy (evaluate.py)."""
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, masked count
    counts = torch.zeros(VOCAB_SIZE * VOCAB_SIZE, dtype=torch.int64, device=device)
    for batch in batches:
        batch = to_device(batch, device)
        with autocast:
            logits = logits_fn(batch["input_ids"], batch["seq_ids"])  # (R, T, V)
        scored = batch["labels"] != IGNORE
        logits, labels = logits[scored].float(), batch["labels"][scored]  # (N, V), (N,)
        predicted = logits.argmax(-1)
        totals[0] += F.cross_entropy(logits, labels, reduction="sum").double()
        totals[1] += (predicted == labels).sum()
        totals[2] += scored.sum()
        if confusion:
            if logits.shape[-1] != VOCAB_SIZE:  # a wider head would alias (true, predicted) pairs in the counts
                raise ValueError(f"confusion counts need {VOCAB_SIZE} logits per token, got {logits.shape[-1]}")
            counts += torch.bincount(labels * VOCAB_SIZE + predicted, minlength=VOCAB_SIZE * VOCAB_SIZE)
    if dist.is_initialized():
        dist.all_reduce(totals)
        if confusion:
            dist.all_reduce(counts)
    loss_sum, correct, count = totals.tolist()
    loss = loss_sum / max(count, 1)
    out = {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "accuracy": correct / max(count, 1),
           "masked_tokens": int(count)}
    if confusion:
        out["confusion"] = counts.view(VOCAB_SIZE, VOCAB_SIZE).cpu().numpy()
    return out
