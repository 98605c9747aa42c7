"""Training and validation batches from .bin shards: packed, masked in worker processes, identical on any GPU count.

    shards ──check_shards──▶ checked headers (every shard of the split, before training)
      │
      │  per epoch: shard_order(seed, epoch)                       shards in a seeded shuffled order
      ▼
    one shard ──scan_sequences──▶ (start, length) of every <cls> … <eos>
      │
      │  visit_pieces(seed, epoch, shard)                           sequences shuffled, long ones cropped
      ▼
    pieces ──pack_greedy──▶ (global row, offset) of every piece      next-fit packing, carried across shards/epochs
      │
      │  PackingPlan.pieces(first_row, n_rows)                     the pieces of the rows this process owns
      ▼
    rows ──fill_rows──▶ tokens (R, T) uint8, seq_ids (R, T) int32
      │
      │  mask_rows(seed, global row)                                one generator per global row
      ▼
    micro-batch {input_ids, labels, seq_ids} ──DataLoader workers──▶ pinned prefetch queue ──to_device──▶ GPU

The training stream is a sequence of rows g = 0, 1, 2, … that is a pure function of (seed, g) given the shards,
`row_length`, `max_length` and the masking options. Step s
owns rows [s·R_step, (s+1)·R_step) with R_step = batch_size // row_length; micro-batch (rank, micro_step) of step
s owns the R = R_step // (world_size · grad_accum) rows starting at (s·world_size·grad_accum + micro_step·world_size
+ rank)·R. So the union a step sees, masks included, is the same for 1 × 8, 2 × 4 or 8 × 1 processes × micro-steps,
and every rank always has work, whatever the number of shards.

Every process (rank, worker) walks the same packing plan, which costs one boundary scan of each shard visited, and
materialises only the rows it owns. Randomness never comes from global state: shard order, sequence order, crop
windows and masks each have a generator seeded from (stream tag, seed, …) with a distinct tag, so the streams are
independent and a rerun repeats exactly. Masks are seeded by (seed, global row g); since g is a function of
(step, rank, micro-step), this is how "random streams from (seed, step, rank, micro-step)" is met, while keeping
the global batch independent of how it is split.

Validation rows (fixed masks, the same packing) are built in validation.py from the stages here.
"""
import bisect
import dataclasses
import hashlib
import itertools
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from shards import ShardError, find_shards, read_header, read_shard
from vocab import CLS, EOS, MASK, PAD, STANDARD_AA_IDS, VOCAB_SIZE

# Tags that make each random stream independent of the others (they lead every generator's seed list).
_SHARD_ORDER, _SEQUENCE_ORDER, _CROP_WINDOW, _ROW_MASK = 1, 2, 3, 4
# Masked diffusion never draws a rate of exactly 0: a sequence with nothing masked would teach nothing.
DIFFUSION_MIN_T = 1e-3
_DRAW_LEVELS = 1 << 16  # masking draws are uint16: rates resolve to 1/65536
IGNORE = -100  # label of a position that is not scored (torch cross_entropy's ignore_index)


# ---------------------------------------------------------------------------------------------------------------
# Stage 1: shards -> sequences
# ---------------------------------------------------------------------------------------------------------------

def check_shards(paths) -> list[int]:
    """Check every shard's header, size, first and last token; return their token counts. Raises ShardError.

    Cheap (two bytes of body per file), so the whole split is checked before training starts. The full body
    check (every sequence `<cls> … <eos>`, ids < 33) happens in `scan_sequences` when a shard is first read.
    """
    counts = []
    for path in paths:
        n_tokens = read_header(path)
        if n_tokens == 0:
            raise ShardError(f"{path}: holds no tokens (an empty shard has no sequences)")
        body = read_shard(path)
        if body[0] != CLS:
            raise ShardError(f"{path}: body starts with token id {body[0]}, not <cls>={CLS}")
        if body[-1] != EOS:
            raise ShardError(f"{path}: body ends with token id {body[-1]}, not <eos>={EOS} (truncated?)")
        counts.append(n_tokens)
    return counts


def scan_sequences(tokens: np.ndarray, path) -> tuple[np.ndarray, np.ndarray]:
    """Sequence boundaries of one shard body: (starts, lengths), both int64 (N,), in tokens incl. <cls>/<eos>.

    Every sequence must be `<cls> residues <eos>` with no <cls> inside and all ids in the vocabulary; anything
    else raises ShardError naming `path` and the offset, because a glued or broken sequence would silently
    let attention cross a protein boundary.
    """
    if tokens.size == 0 or tokens[0] != CLS or tokens[-1] != EOS:
        raise ShardError(f"{path}: body must start with <cls> and end with <eos>")
    ends = np.flatnonzero(tokens == EOS)
    starts = np.empty_like(ends)
    starts[0], starts[1:] = 0, ends[:-1] + 1
    bad = np.flatnonzero(tokens[starts] != CLS)
    if bad.size:
        raise ShardError(f"{path}: token {starts[bad[0]]} follows an <eos> but is not <cls>")
    n_cls = int(np.count_nonzero(tokens == CLS))
    if n_cls != starts.size:
        raise ShardError(f"{path}: {n_cls} <cls> tokens for {starts.size} sequences (a <cls> inside a sequence)")
    top = int(tokens.max())
    if top >= VOCAB_SIZE:
        raise ShardError(f"{path}: token id {top} is outside the {VOCAB_SIZE}-token vocabulary")
    return starts, ends + 1 - starts


# ---------------------------------------------------------------------------------------------------------------
# Stage 2: sequences -> pieces in stream order (shuffle, crop)
# ---------------------------------------------------------------------------------------------------------------

def shard_order(seed: int, epoch: int, n_shards: int) -> np.ndarray:
    """The order (int64 (n_shards,), a permutation of shard indices) in which epoch `epoch` visits the shards."""
    return np.random.default_rng([_SHARD_ORDER, seed, epoch]).permutation(n_shards)


@dataclass
class Pieces:
    """Sequences (whole or cropped) placed in the stream; all arrays share shape (P,) and stream order.

    `shard`/`start`/`length` say where the tokens come from; `row` (global row index) and `offset` (token
    position in the row) where they go, once packed; `cropped` marks windows of longer sequences.
    """
    shard: np.ndarray    # int64, index into the sorted shard list
    start: np.ndarray    # int64, first token of the piece in the shard body
    length: np.ndarray   # int64, tokens of the piece (<= max_length)
    cropped: np.ndarray  # bool
    epoch: np.ndarray    # int64
    row: np.ndarray      # int64, global row (-1 until packed)
    offset: np.ndarray   # int64, first position in the row (-1 until packed)

    def __len__(self) -> int:
        return self.length.size

    def take(self, index) -> "Pieces":
        return Pieces(*(getattr(self, f.name)[index] for f in dataclasses.fields(self)))

    @staticmethod
    def concatenate(parts: list["Pieces"]) -> "Pieces":
        return Pieces(*(np.concatenate([getattr(p, f.name) for p in parts]) for f in dataclasses.fields(Pieces)))


def visit_pieces(seed: int, epoch: int, shard: int, starts: np.ndarray, lengths: np.ndarray,
                 max_length: int) -> Pieces:
    """One shard's sequences in this epoch's seeded order, each cropped to at most `max_length` tokens.

    A longer sequence becomes a window of exactly `max_length` tokens whose start is uniform over the possible
    starts and drawn from (seed, epoch, shard, position of the sequence in the file), so the same protein shows a
    different window each epoch (ESM2 and cramming, arXiv:2212.14034, crop at random). Unpacked (row = -1).
    """
    n = starts.size
    windows = np.random.default_rng([_CROP_WINDOW, seed, epoch, shard]).random(n)
    cropped = lengths > max_length
    shift = np.where(cropped, np.floor(windows * (lengths - max_length + 1)).astype(np.int64), 0)
    order = np.random.default_rng([_SEQUENCE_ORDER, seed, epoch, shard]).permutation(n)
    unplaced = np.full(n, -1, dtype=np.int64)
    return Pieces(shard=np.full(n, shard, dtype=np.int64), start=(starts + shift)[order],
                  length=np.minimum(lengths, max_length)[order], cropped=cropped[order],
                  epoch=np.full(n, epoch, dtype=np.int64), row=unplaced, offset=unplaced.copy())


# ---------------------------------------------------------------------------------------------------------------
# Stage 3: pieces -> packed rows
# ---------------------------------------------------------------------------------------------------------------

def pack_greedy(lengths: np.ndarray, fill: int, row_length: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Next-fit packing of pieces, in order, into rows of `row_length` tokens.

    The open row already holds `fill` tokens (0 <= fill <= row_length): a piece joins the open row if it fits,
    otherwise that row is closed (its tail becomes padding) and the piece opens the next row. Nothing is dropped
    or reordered; every length must be <= row_length. Returns (row, offset, fill after): row (P,) int64 counts
    rows from the open row (0) on, offset (P,) int64 is the first position of each piece in its row.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    n = lengths.size
    if n and lengths.max() > row_length:
        raise ValueError(f"a piece of {lengths.max()} tokens cannot fit a row of {row_length}")
    cum = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=cum[1:])
    cum_list = cum.tolist()
    # One bisection per row (not per piece): the pieces [i, j) that fit are those with cum[j] - cum[i] <= room.
    row_first = [0]
    i, room = 0, row_length - fill
    while True:
        j = bisect.bisect_right(cum_list, cum_list[i] + room, lo=i) - 1
        if j == n:
            break
        row_first.append(j)
        i, room = j, row_length
    first = np.array(row_first, dtype=np.int64)
    row = np.repeat(np.arange(first.size, dtype=np.int64), np.diff(np.append(first, n)))
    offset = cum[:-1] - cum[first[row]] + np.where(row == 0, fill, 0)
    fill_after = (fill if first.size == 1 else 0) + int(cum[n] - cum[first[-1]])
    return row, offset, fill_after


class PackingPlan:
    """The global packing plan, walked lazily shard visit by shard visit from row 0 of epoch 0.

    Each process holds its own plan (the walk is cheap: a boundary scan, a shuffle and a bisection per row) and
    asks for the rows it owns in increasing order; blocks that end before the requested rows are forgotten.
    Starting at row g (a resume) walks, without materialising rows, every shard visit before g: ~0.2 s per
    1e8-token shard on one core, so within the first OMGprot50 epoch (440 shards) at most ~1.5 min per process,
    all processes in parallel, plus ~1.5 min per further epoch.
    """

    def __init__(self, paths: list[Path], seed: int, row_length: int, max_length: int):
        self.paths, self.seed, self.row_length, self.max_length = paths, seed, row_length, max_length
        self._tokens: dict[int, np.ndarray] = {}
        self._blocks: list[Pieces] = []
        self._visits = self._walk()
        self._open_row, self._fill = 0, 0  # the row that the next piece may still join, and its tokens so far
        self._first_asked = 0

    def shard_tokens(self, shard: int) -> np.ndarray:
        """The body of shard `shard` (memory-mapped, opened once per process)."""
        if shard not in self._tokens:
            self._tokens[shard] = read_shard(self.paths[shard]).view(np.ndarray)
        return self._tokens[shard]

    def _walk(self):
        for epoch in itertools.count():
            for shard in shard_order(self.seed, epoch, len(self.paths)).tolist():
                starts, lengths = scan_sequences(self.shard_tokens(shard), self.paths[shard])
                yield visit_pieces(self.seed, epoch, shard, starts, lengths, self.max_length)

    def pieces(self, first_row: int, n_rows: int) -> Pieces:
        """All pieces of rows [first_row, first_row + n_rows), in stream order. Rows must be asked in order."""
        if first_row < self._first_asked:
            raise ValueError(f"rows must be asked in increasing order: {first_row} after {self._first_asked}")
        self._first_asked = first_row
        end_row = first_row + n_rows
        while self._open_row < end_row:  # rows before the open row are complete
            block = next(self._visits)
            row, offset, self._fill = pack_greedy(block.length, self._fill, self.row_length)
            block.row, block.offset = row + self._open_row, offset
            self._open_row += int(row[-1])
            self._blocks.append(block)
        self._blocks = [b for b in self._blocks if b.row[-1] >= first_row]
        live = {int(b.shard[0]) for b in self._blocks}  # unmap shards whose rows are all behind us
        self._tokens = {shard: body for shard, body in self._tokens.items() if shard in live}
        parts = [b.take(slice(np.searchsorted(b.row, first_row), np.searchsorted(b.row, end_row)))
                 for b in self._blocks]
        return Pieces.concatenate(parts)


def fill_rows(pieces: Pieces, first_row: int, n_rows: int, row_length: int,
              shard_tokens) -> tuple[np.ndarray, np.ndarray]:
    """Copy the pieces of rows [first_row, first_row + n_rows) into place.

    `shard_tokens(i)` returns shard i's body. Returns tokens (n_rows, row_length) uint8 with <pad> tails and
    seq_ids (n_rows, row_length) int32: the index of each piece within its row (0, 1, …), -1 on padding.
    """
    tokens = np.full((n_rows, row_length), PAD, dtype=np.uint8)
    seq_ids = np.full((n_rows, row_length), -1, dtype=np.int32)
    rows = pieces.row - first_row
    index_in_row = np.arange(len(pieces)) - np.searchsorted(rows, rows, side="left")
    for shard, start, length, r, offset, k in zip(pieces.shard.tolist(), pieces.start.tolist(),
                                                  pieces.length.tolist(), rows.tolist(), pieces.offset.tolist(),
                                                  index_in_row.tolist()):
        tokens[r, offset:offset + length] = shard_tokens(shard)[start:start + length]
        seq_ids[r, offset:offset + length] = k
    return tokens, seq_ids


# ---------------------------------------------------------------------------------------------------------------
# Stage 4: rows -> masked micro-batch
# ---------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class MaskingConfig:
    """How training rows are masked (built by `DataConfig.masking`). Only residues are ever selected."""
    mask_rate: float = 0.2                # fraction of residues selected for the loss
    bert_corruption: bool = False         # selected residues: 80% <mask>, 10% random standard AA, 10% unchanged
    masked_diffusion: bool = False        # each sequence gets its own rate t · mask_rate, t ~ U(1e-3, 1)

    def __post_init__(self):
        if not 0.0 < self.mask_rate <= 1.0:
            raise ValueError(f"mask_rate: must be in (0, 1], got {self.mask_rate}")
        if self.bert_corruption and self.masked_diffusion:
            raise ValueError("bert_corruption: masked diffusion (mlm: false) uses <mask> as its only corruption")


@dataclass(frozen=True)
class DataConfig:
    """Where the shards are, how rows are packed and batched, and how they are masked (training and validation)."""
    data_dir: str = "data/demo"            # directory holding {data_name}_{train,valid,test}_NNNNNN.bin shards
    data_name: str = "demo"                # shard name prefix
    batch_size: int = 524288               # tokens per optimiser step, all ranks and micro-steps together
    grad_accum: int = 1                    # micro-steps per optimiser step (per rank)
    row_length: int = 16384                # tokens per packed row (a micro-batch is R rows of this length)
    max_length: int = 1024                 # tokens per sequence; a longer one is cropped to a random window
    num_workers: int = 4                   # loader worker processes per rank (0 = in the training process)
    prefetch_factor: int = 2               # micro-batches each worker prepares ahead
    mlm: bool = True                       # true: masked LM at mask_rate; false: masked diffusion (rate drawn per row)
    mask_rate: float = 0.2                 # fraction of residues masked in training
    bert_corruption: bool = False          # BERT/ESM2 80/10/10 (<mask>/random residue/unchanged) instead of all <mask>
    val_mask_rate: float = 0.15            # fraction of residues masked in the fixed validation and test masks
    val_mask_seed: int = 0                 # seed of those masks: fixed, so every run scores the same positions

    def __post_init__(self):
        for key in ("batch_size", "grad_accum", "row_length", "max_length"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key}: must be >= 1, got {getattr(self, key)}")
        if self.num_workers < 0:
            raise ValueError(f"num_workers: must be >= 0, got {self.num_workers}")
        if self.num_workers > 0 and self.prefetch_factor < 1:
            raise ValueError(f"prefetch_factor: must be >= 1 with workers, got {self.prefetch_factor}")
        if self.batch_size % self.row_length:
            raise ValueError(f"batch_size: {self.batch_size} tokens is not a whole number of rows of row_length "
                             f"{self.row_length}")
        if self.max_length > self.row_length:
            raise ValueError(f"max_length: {self.max_length} exceeds row_length {self.row_length} (a sequence must "
                             "fit a row)")
        if not 0 < self.val_mask_rate <= 1:
            raise ValueError(f"val_mask_rate: must be in (0, 1], got {self.val_mask_rate}")
        self.masking  # noqa: B018 - checks the masking rules (mask_rate, bert_corruption with mlm: false) now

    @property
    def masking(self) -> MaskingConfig:
        return MaskingConfig(self.mask_rate, self.bert_corruption, masked_diffusion=not self.mlm)

    def rows_per_micro(self, world_size: int) -> int:
        """Rows of row_length tokens in one rank's micro-batch; raises if the step does not split evenly."""
        rows_per_step = self.batch_size // self.row_length
        if rows_per_step % (world_size * self.grad_accum):
            raise ValueError(f"batch_size: {self.batch_size} tokens = {rows_per_step} rows of {self.row_length} do "
                             f"not split evenly over world size {world_size} × grad_accum {self.grad_accum}")
        return rows_per_step // (world_size * self.grad_accum)


def mask_row(tokens: np.ndarray, seq_ids: np.ndarray, rate: float, masking: MaskingConfig,
             rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Mask one row: tokens (T,) uint8, seq_ids (T,) int32 -> (input_ids (T,) int64, labels (T,) int64).

    Each residue is selected independently with probability `rate` (per sequence with masked diffusion),
    resolved to 1/65536. Selected positions get label = original token; all others -100. Selected positions
    become <mask>, or with bert_corruption 80% <mask> / 10% a uniform standard amino acid / 10% unchanged (BERT,
    arXiv:1810.04805).
    """
    maskable = (tokens != CLS) & (tokens != EOS) & (tokens != PAD)
    # 16-bit uniform draws from raw bytes: about 3x cheaper than float draws, the loader's hottest line.
    draw = np.frombuffer(rng.bytes(2 * tokens.size), dtype=np.uint16)
    if masking.masked_diffusion:
        # MDLM-style (arXiv:2406.07524) noise level per sequence; the loss is not reweighted by 1/t here.
        t = DIFFUSION_MIN_T + (1.0 - DIFFUSION_MIN_T) * rng.random(int(seq_ids.max()) + 1)
        threshold = np.round(rate * t * _DRAW_LEVELS).astype(np.int32)[np.maximum(seq_ids, 0)]
    else:
        threshold = round(rate * _DRAW_LEVELS)  # a Python int: compared as uint16 (65536 = always)
    selected = maskable & (draw < threshold)
    input_ids = tokens.astype(np.int64)
    labels = np.full(tokens.size, IGNORE, dtype=np.int64)
    np.copyto(labels, input_ids, where=selected)
    if masking.bert_corruption:
        where = np.flatnonzero(selected)
        kind = rng.random(where.size)
        replace = where[(kind >= 0.8) & (kind < 0.9)]
        input_ids[where[kind < 0.8]] = MASK
        input_ids[replace] = STANDARD_AA_IDS[rng.integers(0, STANDARD_AA_IDS.size, replace.size)]
    else:
        np.copyto(input_ids, MASK, where=selected)
    return input_ids, labels


def mask_rows(tokens: np.ndarray, seq_ids: np.ndarray, first_row: int, seed: int, rate: float,
              masking: MaskingConfig) -> tuple[np.ndarray, np.ndarray]:
    """Mask rows (R, T) whose global indices are first_row, first_row + 1, …; returns (input_ids, labels) int64.

    Row g draws from its own generator seeded by (seed, g): masks differ between all rows (hence ranks, workers,
    micro-steps) yet row g is masked the same however the step is split across processes.
    """
    input_ids = np.empty(tokens.shape, dtype=np.int64)
    labels = np.empty(tokens.shape, dtype=np.int64)
    for r in range(tokens.shape[0]):
        rng = np.random.default_rng([_ROW_MASK, seed, first_row + r])
        input_ids[r], labels[r] = mask_row(tokens[r], seq_ids[r], rate, masking, rng)
    return input_ids, labels


# ---------------------------------------------------------------------------------------------------------------
# Stage 5: micro-batches in worker processes -> prefetch queue
# ---------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class StreamLayout:
    """Which global rows micro-batch k of one rank owns, and how to build them. Picklable (sent to workers)."""
    paths: tuple[Path, ...]
    seed: int
    row_length: int        # T, tokens per row
    max_length: int        # longest piece, tokens
    rows_per_micro: int    # R = R_step // (world_size * grad_accum)
    world_size: int
    grad_accum: int
    rank: int
    masking: MaskingConfig

    def first_row(self, k: int) -> int:
        """First global row of this rank's micro-batch k (step k // grad_accum, micro-step k % grad_accum)."""
        step, micro_step = divmod(k, self.grad_accum)
        global_micro = step * self.world_size * self.grad_accum + micro_step * self.world_size + self.rank
        return global_micro * self.rows_per_micro


def make_micro_batch(plan: PackingPlan, layout: StreamLayout, k: int) -> tuple[dict, dict]:
    """Micro-batch k of `layout`'s rank: (batch of CPU tensors as in docs/ARCHITECTURE.md, counts for the log)."""
    first_row, n_rows = layout.first_row(k), layout.rows_per_micro
    pieces = plan.pieces(first_row, n_rows)
    tokens, seq_ids = fill_rows(pieces, first_row, n_rows, layout.row_length, plan.shard_tokens)
    rate = layout.masking.mask_rate
    input_ids, labels = mask_rows(tokens, seq_ids, first_row, layout.seed, rate, layout.masking)
    real_tokens = int(pieces.length.sum())
    counts = {"sequences": len(pieces), "cropped": int(pieces.cropped.sum()), "real_tokens": real_tokens,
              "padding_tokens": tokens.size - real_tokens, "masked_tokens": int(np.count_nonzero(labels != IGNORE)),
              "epoch": int(pieces.epoch.max())}
    batch = {"input_ids": torch.from_numpy(input_ids), "labels": torch.from_numpy(labels),
             "seq_ids": torch.from_numpy(seq_ids)}
    return batch, counts


class MicroBatchStream(IterableDataset):
    """This rank's micro-batches k = start_k, start_k + 1, …; worker w of n makes those with (k - start_k) % n == w.

    The DataLoader takes one item from each worker in turn, so its output order is k order; with num_workers=0
    the same code runs in the main process. Yields (k, batch, counts).
    """

    def __init__(self, layout: StreamLayout, start_k: int):
        self.layout, self.start_k = layout, start_k

    def __iter__(self):
        info = get_worker_info()
        worker, n_workers = (0, 1) if info is None else (info.id, info.num_workers)
        layout = self.layout
        plan = PackingPlan(list(layout.paths), layout.seed, layout.row_length, layout.max_length)
        for k in itertools.count(self.start_k + worker, n_workers):
            batch, counts = make_micro_batch(plan, layout, k)
            yield k, batch, counts


def to_device(batch: dict, device) -> dict:
    """Copy a micro-batch to `device`; asynchronous from pinned memory (non_blocking), a no-op copy on CPU."""
    return {key: value.to(device, non_blocking=True) for key, value in batch.items()}


def _data_fingerprint(paths, counts) -> str:
    """sha256 of the shard names and sizes: a resumed run must read the same data."""
    text = "\n".join(f"{Path(p).name} {n}" for p, n in zip(paths, counts))
    return hashlib.sha256(text.encode()).hexdigest()


class TrainLoader:
    """The training stream of one rank. Iterating yields (step, micro_step, batch), grad_accum per step, forever.

    Built from the shards `{data_dir}/{data_name}_train_*.bin`, all checked here, before training. Each batch holds
    `config.rows_per_micro(world_size)` rows of row_length tokens. Workers (num_workers > 0) read, pack and mask;
    pin_memory (needs CUDA) pins the batches for `to_device`.
    """

    def __init__(self, config: DataConfig, *, seed: int, world_size: int = 1, rank: int = 0,
                 pin_memory: bool = False, start_step: int = 0):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} is not in [0, world_size={world_size})")
        if start_step < 0:
            raise ValueError(f"start_step must be >= 0, got {start_step}")
        if pin_memory and not torch.cuda.is_available():
            raise ValueError("pin_memory=True needs CUDA; pass pin_memory=False on a CPU-only machine")
        paths = find_shards(config.data_dir, config.data_name, "train")
        counts = check_shards(paths)
        self.layout = StreamLayout(paths=tuple(paths), seed=seed, row_length=config.row_length,
                                   max_length=config.max_length,
                                   rows_per_micro=config.rows_per_micro(world_size), world_size=world_size,
                                   grad_accum=config.grad_accum, rank=rank, masking=config.masking)
        self.masking = config.masking
        self.batch_size, self.grad_accum = config.batch_size, config.grad_accum
        self.num_workers, self.prefetch_factor = config.num_workers, config.prefetch_factor
        self.pin_memory = pin_memory
        self.shard_tokens = sum(counts)
        self._fingerprint = _data_fingerprint(paths, counts)
        self._next_k = start_step * config.grad_accum
        self._active = None
        self._stats = self._zero_stats()

    @staticmethod
    def _zero_stats() -> dict:
        return {"micro_batches": 0, "sequences": 0, "cropped": 0, "real_tokens": 0, "padding_tokens": 0,
                "masked_tokens": 0, "epoch": 0}

    def __iter__(self):
        self._close_active()
        stream = self._stream()
        # A weak reference: the generator refers to self, and a cycle would keep its worker processes alive (and
        # inherited by later forks) until the cyclic garbage collector happens to run.
        self._active = weakref.ref(stream)
        return stream

    def _stream(self):
        workers = self.num_workers
        loader = DataLoader(MicroBatchStream(self.layout, self._next_k), batch_size=None, num_workers=workers,
                            prefetch_factor=self.prefetch_factor if workers else None, pin_memory=self.pin_memory)
        for k, batch, counts in loader:
            if k != self._next_k:
                raise RuntimeError(f"data loader delivered micro-batch {k}, expected {self._next_k}")
            for key in ("sequences", "cropped", "real_tokens", "padding_tokens", "masked_tokens"):
                self._stats[key] += counts[key]
            self._stats["micro_batches"] += 1
            self._stats["epoch"] = counts["epoch"]
            self._next_k = k + 1
            yield divmod(k, self.grad_accum) + (batch,)

    def _close_active(self):
        """Stop the running iterator, which shuts its worker processes down."""
        stream = self._active() if self._active is not None else None
        if stream is not None:
            stream.close()
        self._active = None

    def stats(self) -> dict:
        """Counts over the micro-batches this rank has received from this loader (not restored on resume).

        sequences / cropped: pieces delivered and how many were cropped windows; real_tokens / padding_tokens /
        masked_tokens: token counts; epoch: the epoch of the latest piece.
        """
        return dict(self._stats)

    def _identity(self) -> dict:
        """What defines the stream besides the position; a resumed run must match it."""
        return {"seed": self.layout.seed, "batch_size": self.batch_size, "row_length": self.layout.row_length,
                "max_length": self.layout.max_length, "masking": dataclasses.asdict(self.masking),
                "data_fingerprint": self._fingerprint}

    def state_dict(self) -> dict:
        """The loader position, for a checkpoint taken between optimizer steps: next_step plus what must match."""
        if self._next_k % self.grad_accum:
            raise RuntimeError(f"state_dict() in the middle of step {self._next_k // self.grad_accum}: checkpoint "
                               "after all grad_accum micro-batches of a step")
        return {"next_step": self._next_k // self.grad_accum, **self._identity()}

    def load_state_dict(self, state: dict) -> None:
        """Restart the stream at state['next_step'] (the next iteration recreates the workers).

        world_size and grad_accum may differ from the saved run (the global batch does not depend on them);
        everything else that defines the stream must match, or this raises naming the field.
        """
        mine = self._identity()
        for key in (mine.keys() | state.keys()) - {"next_step"}:
            if mine.get(key) != state.get(key):
                raise ValueError(f"loader state mismatch on {key!r}: checkpoint has {state.get(key)!r}, this run "
                                 f"{mine.get(key)!r}")
        self._close_active()
        self._next_k = int(state["next_step"]) * self.grad_accum
