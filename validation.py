"""The one fixed-mask MLM evaluation, used by train.py, evaluate.py and benchmarks/.

    sequences ──fixed_mask(tokens, rate, seed)──▶ the same masked positions for every model, batch split and rank
      │
      │  load_validation_batches: packed into rows exactly like training rows (dataloader's stages)
      ▼
    batches {input_ids, labels, seq_ids} ──mlm_metrics(logits_fn)──▶ loss per masked token, accuracy (summed
                                                                     in float64 over batches and ranks)
"""
import hashlib
import math

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from dataloader import IGNORE, Pieces, check_shards, fill_rows, pack_greedy, scan_sequences, to_device
from shards import find_shards, read_shard
from vocab import CLS, EOS, MASK, PAD


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



class ValidationBatches(list):
    """This rank's validation micro-batches (a list of batch dicts) with `.stats` describing the whole split."""

    def __init__(self, batches: list[dict], stats: dict):
        super().__init__(batches)
        self.stats = stats


def load_validation_batches(data_dir, data_name: str, split: str, *, row_length: int, max_length: int,
                            mask_rate: float = 0.15, seed: int = 0, world_size: int = 1, rank: int = 0,
                            rows_per_batch: int = 1) -> ValidationBatches:
    """Every sequence of `{data_dir}/{data_name}_{split}_*.bin`, in file order, packed into fixed rows and masked.

    A sequence longer than max_length keeps its first max_length tokens (counted in stats['cropped']). Masks are
    `fixed_mask(sequence tokens, mask_rate, seed)` with <mask> replacement only (the ESM2 evaluation protocol),
    so they are the same at every evaluation, for every batch split. Row i goes to rank i % world_size; each rank
    gets the same number of batches of rows_per_batch rows, topped up with all-<pad> rows (no label), so
    shapes are fixed and the masked-token count summed over ranks is the same for any world size.
    stats: sequences, cropped, rows, real_tokens, masked_tokens (whole split), rank_rows, rank_masked_tokens.
    """
    if max_length > row_length or min(max_length, rows_per_batch, world_size) < 1:
        raise ValueError(f"need 1 <= max_length={max_length} <= row_length={row_length}, rows_per_batch >= 1, "
                         "world_size >= 1")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank={rank} is not in [0, world_size={world_size})")
    paths = find_shards(data_dir, data_name, split)
    check_shards(paths)
    bodies = [read_shard(path, mmap=False) for path in paths]
    parts = []
    for shard, (path, body) in enumerate(zip(paths, bodies)):
        starts, lengths = scan_sequences(body, path)
        unplaced = np.full(starts.size, -1, dtype=np.int64)
        parts.append(Pieces(shard=np.full(starts.size, shard, dtype=np.int64), start=starts,
                            length=np.minimum(lengths, max_length), cropped=lengths > max_length,
                            epoch=np.zeros(starts.size, dtype=np.int64), row=unplaced, offset=unplaced.copy()))
    pieces = Pieces.concatenate(parts)
    pieces.row, pieces.offset, _ = pack_greedy(pieces.length, 0, row_length)
    n_rows = int(pieces.row[-1]) + 1
    tokens, seq_ids = fill_rows(pieces, 0, n_rows, row_length, bodies.__getitem__)
    input_ids = tokens.astype(np.int64)
    labels = np.full(tokens.shape, IGNORE, dtype=np.int64)
    for r, offset, length in zip(pieces.row.tolist(), pieces.offset.tolist(), pieces.length.tolist()):
        span = slice(offset, offset + length)
        mask = fixed_mask(tokens[r, span], mask_rate, seed)
        labels[r, span][mask] = input_ids[r, span][mask]
        input_ids[r, span][mask] = MASK

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
    stats = {"sequences": len(pieces), "cropped": int(pieces.cropped.sum()), "rows": n_rows,
             "real_tokens": int(pieces.length.sum()), "masked_tokens": int(np.count_nonzero(labels != IGNORE)),
             "rank_rows": int(mine.size), "rank_masked_tokens": int(np.count_nonzero(rank_labels != IGNORE))}
    return ValidationBatches(batches, stats)


@torch.no_grad()
def mlm_metrics(logits_fn, batches, device, autocast) -> dict:
    """Loss per masked token, perplexity and accuracy over this rank's share of the fixed-mask batches, summed over
    ranks (so any number of ranks gives the same numbers). logits_fn(input_ids, seq_ids) -> (R, T, V) logits."""
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, masked count
    for batch in batches:
        batch = to_device(batch, device)
        with autocast:
            logits = logits_fn(batch["input_ids"], batch["seq_ids"])  # (R, T, V)
        scored = batch["labels"] != IGNORE
        logits, labels = logits[scored].float(), batch["labels"][scored]  # (N, V), (N,)
        totals[0] += F.cross_entropy(logits, labels, reduction="sum").double()
        totals[1] += (logits.argmax(-1) == labels).sum()
        totals[2] += scored.sum()
    if dist.is_initialized():
        dist.all_reduce(totals)
    loss_sum, correct, count = totals.tolist()
    loss = loss_sum / max(count, 1)
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "accuracy": correct / max(count, 1),
            "masked_tokens": int(count)}
