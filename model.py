"""The protein masked-LM encoder and its loss: `ModelConfig` and `PLM`.

Two architectures share one code path for embeddings, packed-row attention and the loss:
- "speedrun": the GPT-2 speedrun stack carried over to a bidirectional encoder. Sources are the world records of
  modded-nanogpt, cited by date (the record table in the README of github.com/KellerJordan/modded-nanogpt):
  rotary positions (2024-06-06); ReLU² MLP, QK-norm, zero-initialised output projections (2024-10-14);
  parameter-free RMSNorm after the embedding and zero-initialised head (2024-11-03); the x0 mix and a tanh logit
  cap (2024-11-06); UNet skips (2024-11-10); document-masked FlexAttention over packed rows (2024-11-19); value
  embeddings (2024-12-04) in the mirrored UNet pattern (2024-12-08).
- "esm2": the architecture of Hugging Face `EsmForMaskedLM` (ESM2, Lin et al. 2023, doi:10.1126/science.ade2574):
  pre-LayerNorm blocks with biases, rotary positions, GELU MLP, final LayerNorm, tied dense-GELU-LayerNorm head,
  token dropout. It exists so that benchmarks and ablations compare architectures inside one code base.

Inputs are packed rows (docs/ARCHITECTURE.md): `input_ids` int64 (R, T), `seq_ids` int32 (R, T) with -1 on
padding, `labels` int64 (R, T) with -100 where not scored. Token i attends to token j iff
seq_ids[i] == seq_ids[j] >= 0; rotary positions restart at 0 at each sequence's first token, so a sequence's
outputs do not depend on what it is packed with.

Attention has two interchangeable paths, checked against each other and a dense reference in tests/test_model.py:
FlexAttention with a block mask (CUDA; its backward is not implemented on CPU in torch 2.13), and
scaled-dot-product attention over the same sequences gathered into length buckets (CPU, or on request).

This file has no I/O, no distributed code and reads no global settings; precision (bf16 autocast) and
torch.compile are applied by the caller. Under autocast the residual stream is in the autocast dtype from the
embedding lookup on (`embedding_lookup`, `rms_norm`), as in modded-nanogpt's bf16 activations (2024-11-08); without
autocast every number is what plain fp32 maths gives.
"""
import dataclasses
import functools
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from vocab import EOS, MASK, VOCAB_SIZE, encode_with_specials

ARCHITECTURES = ("speedrun", "esm2")
ATTENTION_BACKENDS = ("auto", "flex", "sdpa")
# ESM2 zeroes <mask> embeddings and rescales by (1 - this) / (1 - observed ratio): 15% of tokens selected,
# 80% of those replaced by <mask>, "the ratio used in all ESM model training runs" (HF EsmEmbeddings).
ESM2_TRAIN_MASK_RATIO = 0.15 * 0.8
ESM2_LAYER_NORM_EPS = 1e-5  # facebook/esm2_t*_UR50D config.json
ROPE_BASE = 10000.0  # rotary base frequency: ESM2's value (HF EsmConfig rope_theta)
# SDPA path: sequences are padded up to a multiple of this many tokens so that similar lengths share one call.
# It changes speed only, never results (padding keys are masked out). See docs/MODEL.md for the measurement.
SDPA_BUCKET_MULTIPLE = 64
# Fields that earlier versions of ModelConfig had, with the one value the model still computes with. A saved config
# (an old checkpoint's model_config.json) may hold them with that value only; ModelConfig.from_dict drops them.
REMOVED_FIELDS = {"sliding_window": 0, "rope_base": ROPE_BASE, "logit_cap_type": "tanh"}


@dataclasses.dataclass
class ModelConfig:
    """Every hyperparameter of the encoder. Flat and JSON-able: checkpoint.py stores `dataclasses.asdict` of it and
    reads it back with `from_dict`.

    The defaults are the speed-track reference model: 132,323,412 parameters (< 150M), see docs/MODEL.md.
    """
    # Shape
    vocab_size: int = VOCAB_SIZE          # tokens; the ESM2 vocabulary (vocab.py)
    hidden_size: int = 768                # model width D
    num_attention_heads: int = 6          # heads; head_dim = D / heads (128 by default, as modded-nanogpt)
    num_hidden_layers: int = 24           # transformer blocks
    expansion_ratio: float = 8 / 3        # MLP width = this · D, rounded up to intermediate_multiple_of
    intermediate_multiple_of: int = 128   # MLP width granularity (tensor-core friendly); 768·8/3 = 2048 exactly
    architecture: str = "speedrun"        # "speedrun" or "esm2" (HF EsmForMaskedLM; see esm2_config())
    # Speedrun ideas, each switchable for ablations
    unet: bool = True                     # first half of the layers feed the second half in reverse
    x0_mix: bool = True                   # every block starts with x = λ0·x + λ1·x0
    value_embeddings: int = 6             # k tables on the first k and last k layers, mirrored; 0 = off
    attention_soft_cap: float = 0.0       # scores → cap·tanh(s/cap); 0 = off (QK-norm bounds |s| ≤ √head_dim)
    soft_logit_cap: float = 32.0          # head logits → cap·tanh(z/cap), see soft_cap(); 0 = off
    tie_embeddings: bool = False          # head weight = token embedding (always true in esm2 mode)
    token_dropout: bool = False           # ESM2's zeroing + rescaling of <mask> embeddings, per sequence
    # Attention
    attention_backend: str = "auto"       # "flex" | "sdpa" | "auto" (flex on CUDA, sdpa otherwise)

    def __post_init__(self):
        def need(ok, message):
            if not ok:
                raise ValueError(f"ModelConfig: {message}")
        need(self.architecture in ARCHITECTURES, f"architecture must be one of {ARCHITECTURES}")
        need(self.attention_backend in ATTENTION_BACKENDS, f"attention_backend must be one of {ATTENTION_BACKENDS}")
        need(self.hidden_size % self.num_attention_heads == 0, "hidden_size must be a multiple of num_attention_heads")
        need(self.head_dim % 2 == 0, "head_dim must be even (rotary embeddings rotate pairs)")
        need(self.num_hidden_layers >= 1 and self.vocab_size >= 1, "need at least one layer and one token")
        need(self.expansion_ratio > 0 and self.intermediate_multiple_of >= 1, "MLP width must be positive")
        need(0 <= 2 * self.value_embeddings <= self.num_hidden_layers,
             "value_embeddings = k puts tables on the first k and last k layers: need 0 <= 2k <= num_hidden_layers")
        need(self.attention_soft_cap >= 0 and self.soft_logit_cap >= 0, "caps must be >= 0 (0 = off)")
        if self.architecture == "esm2":
            speedrun_only = {"unet": self.unet, "x0_mix": self.x0_mix, "value_embeddings": self.value_embeddings,
                             "attention_soft_cap": self.attention_soft_cap, "soft_logit_cap": self.soft_logit_cap}
            on = [name for name, value in speedrun_only.items() if value]
            need(not on, f"architecture='esm2' has no {on}: switch them off (esm2_config() does)")
            need(self.tie_embeddings, "architecture='esm2' ties the decoder to the embeddings: tie_embeddings=True")

    @classmethod
    def from_dict(cls, saved: dict) -> "ModelConfig":
        """A config saved as `dataclasses.asdict`, also by an earlier version: a key of REMOVED_FIELDS is dropped if it
        holds the value the model computes with, and refused otherwise; any other unknown key is refused."""
        saved = dict(saved)
        for key, value in REMOVED_FIELDS.items():
            if key in saved and (old := saved.pop(key)) != value:
                raise ValueError(f"ModelConfig: {key}={old!r} cannot be loaded: the option was removed, and only "
                                 f"{key}={value!r} computes what this model computes")
        unknown = sorted(set(saved) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"ModelConfig: keys {unknown} are not ModelConfig fields")
        return cls(**saved)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def intermediate_size(self) -> int:
        width = math.ceil(self.expansion_ratio * self.hidden_size - 1e-9)
        return -(-width // self.intermediate_multiple_of) * self.intermediate_multiple_of


def esm2_config(hidden_size=320, num_attention_heads=20, num_hidden_layers=6, **overrides) -> ModelConfig:
    """The HF `EsmForMaskedLM` architecture (defaults: the ESM2-8M shape, 7,512,353 parameters, as HF counts them)."""
    fields = dict(architecture="esm2", hidden_size=hidden_size, num_attention_heads=num_attention_heads,
                  num_hidden_layers=num_hidden_layers, expansion_ratio=4.0, unet=False, x0_mix=False,
                  value_embeddings=0, attention_soft_cap=0.0, soft_logit_cap=0.0, tie_embeddings=True,
                  token_dropout=True)
    return ModelConfig(**{**fields, **overrides})


# ----------------------------------------------------------------------------------------------------------------
# Layer placement rules


def mirror_layer(layer: int, num_layers: int) -> int:
    """The layer at the same distance from the other end: the UNet pairing (0 ↔ L-1, 1 ↔ L-2, ...)."""
    return num_layers - 1 - layer


def unet_skip_source(layer: int, num_layers: int) -> int | None:
    """UNet skips (modded-nanogpt, 2024-11-10): the first L//2 layers store their outputs; layer i of the last L//2
    adds the stored output of its mirror layer before running, so the last layer gets layer 0's output. With odd L
    the middle layer neither stores nor adds. Returns the source layer, or None."""
    return mirror_layer(layer, num_layers) if layer >= num_layers - num_layers // 2 else None


def stores_unet_skip(layer: int, num_layers: int) -> bool:
    return layer < num_layers // 2


def value_embedding_table(layer: int, num_layers: int, num_tables: int) -> int | None:
    """Value embeddings in the mirrored UNet pattern (modded-nanogpt, 2024-12-08): table i feeds layer i and its mirror
    layer L-1-i, so k tables cover the first k and the last k layers. Returns the table index, or None."""
    if layer < num_tables:
        return layer
    if mirror_layer(layer, num_layers) < num_tables:
        return mirror_layer(layer, num_layers)
    return None


# ----------------------------------------------------------------------------------------------------------------
# Small pure functions


def rms_norm(x: torch.Tensor) -> torch.Tensor:
    """Parameter-free RMSNorm over the last dimension (modded-nanogpt: no learned gains), in x's dtype.

    It runs outside autocast: CUDA autocast lists rms_norm as an fp32 op, so a bf16 x would come back fp32 and an
    fp32 copy of x would be saved for backward. The kernel accumulates in fp32 whatever the input dtype (as
    modded-nanogpt's bf16 F.rms_norm does), so nothing is lost. Without autocast this is plain F.rms_norm."""
    with torch.autocast(x.device.type, enabled=False):
        return F.rms_norm(x, (x.size(-1),))


def embedding_lookup(table: nn.Embedding, ids: torch.Tensor) -> torch.Tensor:
    """(R, T) ids -> (R, T, D) rows of `table`, in the autocast dtype when autocast is on for ids' device.

    This is where a bf16 residual stream starts (modded-nanogpt's bf16 activations, 2024-11-08):
    nn.Embedding is not an autocast op, so without the cast x0, x, the UNet skips and every norm and residual add
    would run, and be saved for backward, in fp32. Rows are gathered in fp32 and then cast, so the backward still
    accumulates the table's gradient in fp32. Without autocast (fp32 runs) it is the plain lookup."""
    rows = table(ids)
    if torch.is_autocast_enabled(ids.device.type):
        rows = rows.to(torch.get_autocast_dtype(ids.device.type))
    return rows


def soft_cap(z: torch.Tensor, cap: float) -> torch.Tensor:
    """cap·tanh(z/cap): range (-cap, cap), slope 1 at 0; cap = 0 returns z unchanged. Gemma 2 (arXiv:2408.00118);
    modded-nanogpt capped its logits at 30 (2024-11-06), then 15 (2025-01-04)."""
    if cap == 0:
        return z
    return cap * torch.tanh(z / cap)


def sequence_positions(seq_ids: torch.Tensor) -> torch.Tensor:
    """(R, T) seq_ids -> (R, T) int64 position of each token inside its sequence: 0 at each sequence's first token.

    A sequence starts where seq_ids changes along the row (padding runs get positions too; they are never used).
    """
    col = torch.arange(seq_ids.size(1), device=seq_ids.device).expand(seq_ids.shape)
    starts = torch.ones_like(seq_ids, dtype=torch.bool)
    starts[:, 1:] = seq_ids[:, 1:] != seq_ids[:, :-1]
    start_col = torch.where(starts, col, torch.zeros_like(col)).cummax(dim=1).values
    return col - start_col


def rotary_tables(positions: torch.Tensor, head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary position embeddings (Su et al., arXiv:2104.09864) in ESM2's rotate-half layout, base ROPE_BASE.
    (R, T) positions -> cos, sin each (R, T, 1, head_dim/2) in fp32, broadcast over heads."""
    inv_freq = ROPE_BASE ** (-torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim)
    angles = positions.to(torch.float32)[..., None, None] * inv_freq  # (R, T, 1, head_dim/2)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (R, T, H, Dh) pairs (x[i], x[i + Dh/2]) by the position angle; same as HF `apply_rotary_pos_emb`."""
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).type_as(x)


def token_dropout(x: torch.Tensor, input_ids: torch.Tensor, seq_ids: torch.Tensor) -> torch.Tensor:
    """ESM2 token dropout per packed sequence: zero the <mask> embeddings and scale every embedding of a sequence by
    (1 - 0.15·0.8) / (1 - that sequence's observed <mask> ratio), as HF `EsmEmbeddings` does per padded row.
    (R, T, D) -> (R, T, D). In speedrun mode the RMSNorm that follows cancels the scale; the zeroing remains."""
    is_mask = input_ids == MASK
    real = (seq_ids >= 0).float()  # counts in fp32 also under bf16 autocast: bf16 cannot count past 256 exactly
    slot = seq_ids.clamp(min=0).long()  # a row holds at most T sequences, so slots 0..T-1 suffice
    length = torch.zeros_like(real).scatter_add_(1, slot, real)
    masked = torch.zeros_like(real).scatter_add_(1, slot, is_mask.float() * real)
    observed = masked.gather(1, slot) / length.gather(1, slot).clamp(min=1)  # (R, T): ratio of the token's sequence
    scale = (1 - ESM2_TRAIN_MASK_RATIO) / (1 - observed).clamp(min=1e-3)  # an all-<mask> sequence stays finite
    return x.masked_fill(is_mask[..., None], 0.0) * scale.to(x.dtype)[..., None]


# ----------------------------------------------------------------------------------------------------------------
# Document masking and the two attention paths


@functools.cache
def compiled_flex_attention():
    """`flex_attention` compiled once per process, on first use (not at import: compiling is slow and needs no
    caller to pay for it unless FlexAttention runs). Uncompiled flex materialises the full score matrix."""
    from torch.nn.attention.flex_attention import flex_attention
    return torch.compile(flex_attention, dynamic=False, fullgraph=True)


# FlexAttention's sparse block: the block mask says, per (query block, key block) tile, whether to skip it, compute
# it with the mask_mod, or compute it without (a "full" tile). torch's default, which its kernels are tuned for.
FLEX_BLOCK = 128


def document_block_mask(seq_ids: torch.Tensor):
    """The FlexAttention BlockMask of `DocumentMask`, built from per-block sequence-id ranges: O(R·(T/128)²) work.

    `create_block_mask` would evaluate the mask predicate on all R·T² position pairs (10⁹ at 4 × 16,384), and
    eagerly it materialises them; modded-nanogpt builds its masks from block ranges too (`BlockMask.from_kv_blocks`,
    FlexAttention record of 2024-11-19). Block q may see block k iff their id ranges overlap; the tile is full iff
    both blocks hold one and the same sequence with no padding. For rows whose ids rise by one per sequence, as every
    packer here writes them, this is exactly `create_block_mask`'s answer (tests/test_gpu_path.py); for other ids it
    is a superset of tiles, and the mask_mod still decides inside each one.
    """
    from torch.nn.attention.flex_attention import BlockMask

    def same_sequence(b, h, q, k):
        return (seq_ids[b, q] == seq_ids[b, k]) & (seq_ids[b, q] >= 0)

    R, T = seq_ids.shape
    n = -(-T // FLEX_BLOCK)
    ids = F.pad(seq_ids, (0, n * FLEX_BLOCK - T), value=-1).view(R, n, FLEX_BLOCK)  # (R, n, 128)
    real = ids >= 0
    lo = torch.where(real, ids, torch.iinfo(ids.dtype).max).amin(-1)  # (R, n) smallest id; MAX if all padding
    hi = ids.amax(-1)  # (R, n) largest id; -1 if all padding
    touch = (lo[:, :, None] <= hi[:, None, :]) & (lo[:, None, :] <= hi[:, :, None])  # (R, n_q, n_k)
    single = real.all(-1) & (lo == hi)  # (R, n): one sequence fills the block
    full = single[:, :, None] & single[:, None, :] & (lo[:, :, None] == lo[:, None, :])

    def ordered(tiles):  # (R, n, n) bool -> counts (R, 1, n), indices (R, 1, n, n): listed tiles first, in order
        tiles = tiles.to(torch.int32)[:, None]
        order = torch.argsort(tiles, dim=-1, descending=True, stable=True)
        return tiles.sum(-1, dtype=torch.int32), order.to(torch.int32)

    return BlockMask.from_kv_blocks(*ordered(touch & ~full), *ordered(full), BLOCK_SIZE=FLEX_BLOCK,
                                    mask_mod=same_sequence, seq_lengths=(T, T))


@dataclasses.dataclass
class SequenceBucket:
    """n sequences padded to P tokens: the next n·P slots of the SDPA path's gathered tokens."""
    n: int
    P: int
    key_mask: torch.Tensor  # (n, 1, 1, P) bool: is the key slot a real token (every query may attend to it)


@dataclasses.dataclass
class SequenceBuckets:
    """The SDPA path's plan: every real token gathered once into bucketed slots, and scattered back."""
    buckets: list[SequenceBucket]
    gather_index: torch.Tensor   # (slots,) int64 flat token index of each slot; padding slots read token 0
    scatter_index: torch.Tensor  # (slots,) int64 flat token index of each slot; padding slots write to R·T (dropped)


class DocumentMask:
    """Who attends to whom in a batch of packed rows, built once per forward and shared by all layers.

    Token i attends to j iff seq_ids[i] == seq_ids[j] >= 0. Sequences are contiguous runs of one seq_id in a row, as
    the dataloader writes them. For "flex" this is a BlockMask (document masking lets long packed rows cost what
    their sequences cost, as in modded-nanogpt's FlexAttention record of 2024-11-19); for "sdpa" it is
    SequenceBuckets (sequences grouped by padded length).
    """

    def __init__(self, seq_ids: torch.Tensor, backend: str):
        self.backend = backend
        self.positions = sequence_positions(seq_ids)
        if backend == "flex":
            self.block_mask = document_block_mask(seq_ids)
        else:
            self.buckets = self._buckets(seq_ids)

    @staticmethod
    @torch.compiler.disable  # data-dependent shapes (one call per bucket): runs eagerly inside a compiled model
    def _buckets(seq_ids) -> SequenceBuckets:
        R, T = seq_ids.shape
        flat = seq_ids.reshape(-1)
        col = torch.arange(T, device=flat.device).repeat(R)
        run_start = (col == 0) | (flat != torch.roll(flat, 1))  # a new run of one seq_id (or padding) begins
        run_id = torch.cumsum(run_start, 0) - 1
        run_length = torch.bincount(run_id)
        starts = torch.nonzero(run_start & (flat >= 0)).squeeze(1)  # first token of each real sequence
        lengths = run_length[run_id[starts]]
        padded = (lengths + SDPA_BUCKET_MULTIPLE - 1) // SDPA_BUCKET_MULTIPLE * SDPA_BUCKET_MULTIPLE
        buckets, gather, scatter = [], [], []
        for P in sorted(set(padded.tolist())):
            chosen = padded == P
            slot = torch.arange(P, device=flat.device)
            index = starts[chosen][:, None] + slot  # (n, P)
            valid = slot < lengths[chosen][:, None]  # (n, P)
            buckets.append(SequenceBucket(index.size(0), P, valid[:, None, None, :]))  # key mask (n, 1, 1, P)
            gather.append(torch.where(valid, index, 0).reshape(-1))
            scatter.append(torch.where(valid, index, R * T).reshape(-1))
        empty = torch.zeros(0, dtype=torch.int64, device=flat.device)
        return SequenceBuckets(buckets, torch.cat(gather) if gather else empty,
                               torch.cat(scatter) if scatter else empty)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: DocumentMask, soft_cap_value: float):
    """Attention inside sequences. q, k, v: (R, T, H, Dh) -> (R, T, H, Dh); padding queries get zeros.
    Scores are q·k/√Dh, then soft-capped (cap·tanh(s/cap): Gemma 2, arXiv:2408.00118) when soft_cap_value > 0."""
    if mask.backend == "flex":
        return flex_attention_packed(q, k, v, mask, soft_cap_value)
    return sdpa_attention_packed(q, k, v, mask, soft_cap_value)


def flex_attention_packed(q, k, v, mask: DocumentMask, soft_cap_value: float):
    """FlexAttention over whole packed rows with the block mask: only blocks that touch a sequence are computed."""
    def capped(score, b, h, q_idx, kv_idx):
        return soft_cap_value * torch.tanh(score / soft_cap_value)

    score_mod = capped if soft_cap_value > 0 else None
    # .contiguous(): inside a compiled model on CPU (torch 2.13), flex fed the strided output of the fused QK-norm
    # returns wrong values without an error (tests/test_model.py::test_compiled_flex_model_matches_eager_sdpa_model;
    # stride bugs of the same family: pytorch/pytorch#146377). Inductor folds the copy into the producer.
    q, k, v = (t.contiguous().transpose(1, 2) for t in (q, k, v))  # (R, H, T, Dh)
    if torch.compiler.is_compiling():  # inside a compiled model the graph compiles flex itself
        from torch.nn.attention.flex_attention import flex_attention
        y = flex_attention(q, k, v, score_mod=score_mod, block_mask=mask.block_mask)
    else:
        y = compiled_flex_attention()(q, k, v, score_mod=score_mod, block_mask=mask.block_mask)
    return y.transpose(1, 2)  # (R, T, H, Dh)


@torch.compiler.disable  # per-bucket shapes vary from batch to batch; the kernels inside are already fused
def sdpa_attention_packed(q, k, v, mask: DocumentMask, soft_cap_value: float):
    """Scaled-dot-product attention over the sequences gathered into (n, P) buckets: cost ∝ Σ L·P, not R·T².
    One gather and one scatter per call (not one per bucket and tensor: their backward zero-fills dominated)."""
    R, T, H, Dh = q.shape
    plan = mask.buckets
    slots = torch.stack([q, k, v], dim=2).view(R * T, 3, H, Dh)[plan.gather_index]  # (slots, 3, H, Dh)
    outputs = []
    # split, not slicing: the backward of a slice zero-fills the whole gathered tensor once per bucket
    for b, piece in zip(plan.buckets, slots.split([b.n * b.P for b in plan.buckets])):
        qb, kb, vb = piece.view(b.n, b.P, 3, H, Dh).permute(2, 0, 3, 1, 4)  # each (n, H, P, Dh)
        if soft_cap_value > 0:  # SDPA has no score hook: compute the capped scores explicitly
            scores = soft_cap(qb @ kb.transpose(-1, -2) / math.sqrt(Dh), soft_cap_value)  # (n, H, P, P)
            scores = scores.masked_fill(~b.key_mask, float("-inf"))
            yb = torch.softmax(scores.float(), dim=-1).type_as(vb) @ vb
        else:
            yb = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=b.key_mask)
        outputs.append(yb.transpose(1, 2).reshape(b.n * b.P, H, Dh))
    y = q.new_zeros(R * T + 1, H, Dh)  # row R·T collects the padding slots' outputs and is dropped
    if outputs:
        y = y.index_copy(0, plan.scatter_index, torch.cat(outputs))
    return y[:R * T].view(R, T, H, Dh)


# ----------------------------------------------------------------------------------------------------------------
# Fixed-shape batches for inference (embed, evaluate.py)


@dataclasses.dataclass
class InferencePacking:
    """Where each sequence of a set goes when the set is run in batches of one (rows, width) shape."""
    rows: int    # R: rows per batch
    width: int   # T: tokens per row
    batches: list[list[tuple[int, int, int]]]  # per batch: (sequence index, row, offset) of each sequence in it


def pack_for_inference(lengths, max_tokens: int) -> InferencePacking:
    """Pack sequences of `lengths` tokens into batches of R rows of T tokens, the same (R, T) for every batch.

    One shape means one compile of the compiled kernels (FlexAttention on CUDA): a padded batch per width would
    compile once per width, and past torch's recompile limit flex falls back to an eager kernel that materialises
    the (R, H, T, T) scores. T = the longest length rounded up to FLEX_BLOCK; R = max(1, max_tokens // T).
    Sequences go longest first, next-fit into rows (a new row when the next one does not fit), as the training
    packer does; the last batch may hold fewer than R rows (`packed_rows` tops it up with empty rows).
    """
    lengths = [int(n) for n in lengths]
    if not lengths:
        return InferencePacking(1, FLEX_BLOCK, [])
    width = -(-max(lengths) // FLEX_BLOCK) * FLEX_BLOCK
    rows = max(1, max_tokens // width)
    placements, row, fill = [], 0, 0
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        if fill + lengths[i] > width:
            row, fill = row + 1, 0
        placements.append((i, row, fill))
        fill += lengths[i]
    batches = [[] for _ in range(row // rows + 1)]
    for i, r, offset in placements:
        batches[r // rows].append((i, r % rows, offset))
    return InferencePacking(rows, width, batches)


def packed_rows(pieces, batch: list[tuple[int, int, int]], rows: int, width: int, fill: int):
    """The rows of one batch of `pack_for_inference`: (R, T) int64 values (`fill` on padding) and (R, T) int32
    seq_ids (0, 1, … per row, -1 on padding). pieces[i] is sequence i's 1-D int tensor (tokens, or labels)."""
    values = torch.full((rows, width), fill, dtype=torch.int64)
    seq_ids = torch.full((rows, width), -1, dtype=torch.int32)
    next_id = [0] * rows
    for i, row, offset in batch:
        n = pieces[i].numel()
        values[row, offset:offset + n] = pieces[i]
        seq_ids[row, offset:offset + n] = next_id[row]
        next_id[row] += 1
    return values, seq_ids


# ----------------------------------------------------------------------------------------------------------------
# Modules


class Attention(nn.Module):
    """Self-attention: merged QKV projection (modded-nanogpt, 2025-01-16), QK-norm (speedrun), rotary positions,
    optional value embedding mixed into V (`v = a0·v + a1·ve`, 2024-12-04), document-masked attention, output
    projection."""

    def __init__(self, config: ModelConfig, has_value_embedding: bool):
        super().__init__()
        D = config.hidden_size
        self.num_heads, self.head_dim = config.num_attention_heads, config.head_dim
        self.esm2 = config.architecture == "esm2"
        self.soft_cap = config.attention_soft_cap
        # Separate 2-D matrices so that Muon orthogonalises each one; concatenated per forward for one GEMM.
        self.q_weight, self.k_weight, self.v_weight, self.out_weight = (nn.Parameter(torch.empty(D, D))
                                                                        for _ in range(4))
        if self.esm2:
            self.q_bias, self.k_bias, self.v_bias, self.out_bias = (nn.Parameter(torch.empty(D)) for _ in range(4))
        self.value_embedding_lambdas = nn.Parameter(torch.empty(2)) if has_value_embedding else None

    def forward(self, x, mask: DocumentMask, rope, value_embedding=None):
        R, T, D = x.shape
        bias = torch.cat([self.q_bias, self.k_bias, self.v_bias]) if self.esm2 else None
        qkv = F.linear(x, torch.cat([self.q_weight, self.k_weight, self.v_weight]), bias)  # (R, T, 3D)
        q, k, v = qkv.view(R, T, 3, self.num_heads, self.head_dim).unbind(2)  # each (R, T, H, Dh)
        if not self.esm2:
            q, k = rms_norm(q), rms_norm(k)  # QK-norm (modded-nanogpt, 2024-10-14)
        q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        if self.value_embedding_lambdas is not None:
            a = self.value_embedding_lambdas
            v = a[0] * v + a[1] * value_embedding.view_as(v)
        # Attention kernels need one dtype. Under autocast q, k, v are already bf16 (bf16 lookups, rms_norm in
        # x's dtype); the cast keeps that true for a caller whose norms return fp32 (tests/test_model.py).
        q, k, v = q.to(qkv.dtype), k.to(qkv.dtype), v.to(qkv.dtype)
        y = attend(q, k, v, mask, self.soft_cap).reshape(R, T, D)
        return F.linear(y, self.out_weight, self.out_bias if self.esm2 else None)


class MLP(nn.Module):
    """speedrun: relu(x·W1ᵀ)²·W2ᵀ, no biases (So et al. "Primer", arXiv:2109.08668; modded-nanogpt 2024-10-14).
    esm2: gelu(x·W1ᵀ + b1)·W2ᵀ + b2 with exact erf GELU, as HF EsmIntermediate/EsmOutput."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        D, F_ = config.hidden_size, config.intermediate_size
        self.esm2 = config.architecture == "esm2"
        self.up_weight, self.down_weight = nn.Parameter(torch.empty(F_, D)), nn.Parameter(torch.empty(D, F_))
        if self.esm2:
            self.up_bias, self.down_bias = nn.Parameter(torch.empty(F_)), nn.Parameter(torch.empty(D))

    def forward(self, x):
        if self.esm2:
            return F.linear(F.gelu(F.linear(x, self.up_weight, self.up_bias)), self.down_weight, self.down_bias)
        h = F.relu(F.linear(x, self.up_weight))  # (R, T, F)
        # h·h rather than h.square(): CUDA autocast runs pow in fp32, which would make (and save for backward) an
        # fp32 (R, T, F) tensor per layer. In fp32 the two are the same numbers, forward and backward.
        return F.linear(h * h, self.down_weight)


class Block(nn.Module):
    """Pre-norm transformer block: [x = λ0·x + λ1·x0]; x += attn(norm(x)); x += mlp(norm(x)).
    Norms are parameter-free RMSNorm (speedrun) or LayerNorm with weight and bias (esm2)."""

    def __init__(self, config: ModelConfig, layer: int):
        super().__init__()
        has_ve = value_embedding_table(layer, config.num_hidden_layers, config.value_embeddings) is not None
        self.attn, self.mlp = Attention(config, has_ve), MLP(config)
        if config.architecture == "esm2":
            self.attn_norm = nn.LayerNorm(config.hidden_size, eps=ESM2_LAYER_NORM_EPS)
            self.mlp_norm = nn.LayerNorm(config.hidden_size, eps=ESM2_LAYER_NORM_EPS)
        else:
            self.attn_norm = self.mlp_norm = rms_norm
        self.x0_lambdas = nn.Parameter(torch.empty(2)) if config.x0_mix else None

    def forward(self, x, x0, mask: DocumentMask, rope, value_embedding=None):
        if self.x0_lambdas is not None:  # x0 shortcut (modded-nanogpt, 2024-11-06): every block re-reads the embedding
            lam = self.x0_lambdas.type_as(x)
            x = lam[0] * x + lam[1] * x0
        x = x + self.attn(self.attn_norm(x), mask, rope, value_embedding)
        return x + self.mlp(self.mlp_norm(x))


class LinearHead(nn.Module):
    """The speedrun head: logits = x·Wᵀ, no bias (modded-nanogpt's lm_head)."""

    def __init__(self, hidden_size: int, vocab_size: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(vocab_size, hidden_size))

    def forward(self, x):
        return F.linear(x, self.weight)


class ESM2Head(nn.Module):
    """HF EsmLMHead: dense → GELU → LayerNorm → decoder (weight = token embedding) + bias."""

    def __init__(self, config: ModelConfig, embedding: nn.Embedding):
        super().__init__()
        D = config.hidden_size
        self.dense_weight, self.dense_bias = nn.Parameter(torch.empty(D, D)), nn.Parameter(torch.empty(D))
        self.norm = nn.LayerNorm(D, eps=ESM2_LAYER_NORM_EPS)
        self.decoder_weight = embedding.weight  # tied, as in ESM2
        self.bias = nn.Parameter(torch.empty(config.vocab_size))

    def forward(self, x):
        x = self.norm(F.gelu(F.linear(x, self.dense_weight, self.dense_bias)))
        return F.linear(x, self.decoder_weight, self.bias)


class PLM(nn.Module):
    """The encoder: `PLM(config)`, then `init_weights()` (or load a state dict). See the module docstring."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        L, D, V = config.num_hidden_layers, config.hidden_size, config.vocab_size
        # _weight=empty: shapes only, nn.Embedding's own random init is skipped (init_weights sets every parameter)
        self.token_embedding = nn.Embedding(V, D, _weight=torch.empty(V, D))
        self.value_embeds = nn.ModuleList(nn.Embedding(V, D, _weight=torch.empty(V, D))
                                          for _ in range(config.value_embeddings))
        self.blocks = nn.ModuleList(Block(config, layer) for layer in range(L))
        self.skip_weights = nn.Parameter(torch.empty(L // 2)) if config.unet else None  # indexed by source layer
        if config.architecture == "esm2":
            self.final_norm = nn.LayerNorm(D, eps=ESM2_LAYER_NORM_EPS)  # HF emb_layer_norm_after
            self.head = ESM2Head(config, self.token_embedding)
        else:
            self.final_norm = rms_norm
            # A plain linear head, as modded-nanogpt: SpeedrunningPLMs' extra dense+GELU costs D² per token
            # (≈ 1/12 of a block) for a 33-way softmax; its value is an ablation for experiments/.
            self.head = LinearHead(D, V)
            if config.tie_embeddings:
                self.head.weight = self.token_embedding.weight

    # ------------------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def init_weights(self) -> None:
        """Set every parameter, drawing from torch's current generator (seed it first for a reproducible model)."""
        c = self.config
        done = set()

        def init(p, fn, *args):
            if id(p) not in done:  # a tied matrix is initialised once
                fn(p, *args)
                done.add(id(p))

        if c.architecture == "esm2":
            # HF EsmPreTrainedModel._init_weights: N(0, 0.02) matrices and embeddings, zero biases, LayerNorm (1, 0).
            for name, p in self.named_parameters():
                if name.endswith("norm.weight"):
                    init(p, nn.init.ones_)
                elif p.ndim == 1:
                    init(p, nn.init.zeros_)
                else:
                    init(p, nn.init.normal_, 0.0, 0.02)
        else:
            # "modded 2025-02" below: train_gpt.py in modded-nanogpt's records/track_1_short/2025-02-01_RuleTweak.
            hidden_std = 0.5 * c.hidden_size ** -0.5  # modded-nanogpt: uniform ±√3·0.5·D^-0.5, i.e. std 0.5/√D
            bound = math.sqrt(3) * hidden_std
            # Head N(0, 0.005), as modded-nanogpt's lm_head in its 2025–26 train_gpt.py: untrained logits ≈ 0, so
            # the loss starts within ~0.01 of ln(V). Not zero (modded-nanogpt's head of 2024-11-03): with
            # token_dropout the <mask> positions start with an all-zero residual stream, and a zero head plus zero
            # output projections is then an exact fixed point where every gradient is zero
            # (test_every_option_builds_and_trains caught it).
            init(self.head.weight, nn.init.normal_, 0.0, 0.005)
            if not c.tie_embeddings:  # (tied: the head's init above is the embedding's; RMSNorm follows the lookup)
                init(self.token_embedding.weight, nn.init.normal_, 0.0, 1.0)  # nn.Embedding default, as modded
            for table in self.value_embeds:
                init(table.weight, nn.init.normal_, 0.0, 1.0)  # nn.Embedding default (modded 2025-02)
            for block in self.blocks:
                a, m = block.attn, block.mlp
                for w in (a.q_weight, a.k_weight, a.v_weight, m.up_weight):
                    init(w, nn.init.uniform_, -bound, bound)
                init(a.out_weight, nn.init.zeros_)  # zero output projections (modded-nanogpt, 2024-10-14):
                init(m.down_weight, nn.init.zeros_)  # each block starts as the identity
                if a.value_embedding_lambdas is not None:
                    init(a.value_embedding_lambdas, lambda p: p.copy_(torch.tensor([0.5, 0.5])))  # modded 2025-02
                if block.x0_lambdas is not None:
                    init(block.x0_lambdas, lambda p: p.copy_(torch.tensor([1.0, 0.0])))  # starts as plain x
            if self.skip_weights is not None:
                init(self.skip_weights, nn.init.ones_)  # modded 2025-02: skips start fully on
        missing = [name for name, p in self.named_parameters() if id(p) not in done]
        assert not missing, f"init_weights left parameters unset: {missing}"

    # ------------------------------------------------------------------------------------------------------------
    def attention_backend(self, device: torch.device) -> str:
        """The attention path this model takes on `device`: "flex" or "sdpa" ("auto" resolved)."""
        backend = self.config.attention_backend
        if backend == "auto":
            return "flex" if device.type == "cuda" else "sdpa"
        return backend

    def _residual_stream(self, input_ids, seq_ids, stop_after: int | None = None) -> torch.Tensor:
        """Embeddings and blocks. Returns the residual stream after `stop_after` blocks (all by default), (R, T, D)."""
        c = self.config
        L = c.num_hidden_layers
        mask = DocumentMask(seq_ids, self.attention_backend(input_ids.device))
        rope = rotary_tables(mask.positions, c.head_dim)
        x = embedding_lookup(self.token_embedding, input_ids)  # (R, T, D), bf16 under autocast
        if c.token_dropout:
            x = token_dropout(x, input_ids, seq_ids)
        if c.architecture == "speedrun":
            x = rms_norm(x)  # post-embedding norm (modded-nanogpt, 2024-11-03)
        x0 = x
        value_embeds = [embedding_lookup(table, input_ids) for table in self.value_embeds]  # each (R, T, D)
        stored = {}
        for layer, block in enumerate(self.blocks[:stop_after]):
            source = unet_skip_source(layer, L) if c.unet else None
            if source is not None:
                x = x + self.skip_weights[source].type_as(x) * stored.pop(source)
            table = value_embedding_table(layer, L, c.value_embeddings)
            x = block(x, x0, mask, rope, value_embeds[table] if table is not None else None)
            if c.unet and stores_unet_skip(layer, L):
                stored[layer] = x
        return x

    def logits(self, input_ids: torch.Tensor, seq_ids: torch.Tensor) -> torch.Tensor:
        """(R, T) -> (R, T, V) fp32 logits, soft-capped as the loss sees them."""
        z = self.head(self.final_norm(self._residual_stream(input_ids, seq_ids))).float()
        return soft_cap(z, self.config.soft_logit_cap)

    def forward(self, input_ids: torch.Tensor, seq_ids: torch.Tensor, labels: torch.Tensor):
        """-> (summed cross-entropy over positions with labels != -100: fp32 scalar, their count: int64 scalar).
        The training loop divides by the count summed over micro-batches and ranks."""
        z = self.logits(input_ids, seq_ids)
        loss_sum = F.cross_entropy(z.view(-1, z.size(-1)), labels.view(-1), reduction="sum", ignore_index=-100)
        return loss_sum, (labels != -100).sum()

    def hidden_states(self, input_ids, seq_ids, layer: int | None = None) -> torch.Tensor:
        """(R, T) -> (R, T, D). layer=None: the final normed output (what the head reads). layer=i in 0..L: the
        residual stream after i blocks (0 = embedding output), as HF `hidden_states[i]`; later blocks are skipped."""
        L = self.config.num_hidden_layers
        if layer is None:
            return self.final_norm(self._residual_stream(input_ids, seq_ids))
        if not 0 <= layer <= L:
            raise ValueError(f"layer must be None or in 0..{L}, got {layer}")
        return self._residual_stream(input_ids, seq_ids, stop_after=layer)

    @torch.no_grad()
    def embed(self, sequences: list[str], layer: int | None = None, max_tokens: int = 8192, device=None):
        """Representations of amino-acid strings for downstream use.

        Each sequence is encoded as <cls> residues <eos>; the sequences are packed into batches of one fixed shape
        (`pack_for_inference`: rows as wide as the longest sequence rounded up to 128, max_tokens // width rows) and
        run in eval mode without grad, under bf16 autocast on CUDA (as in training) and in fp32 elsewhere.
        `device`: where to run; the model is moved there (like `.to(device)`); None = where it is.
        Returns (per_residue, pooled): a list of (L_i, D) fp32 CPU tensors without <cls>/<eos>, in input order,
        and their (N, D) means. A sequence's result does not depend on the other sequences (tested).
        """
        if device is not None:
            self.to(device)
        device = next(self.parameters()).device
        tokens = [torch.from_numpy(encode_with_specials(s).astype("int64")) for s in sequences]
        if any(t.numel() <= 2 for t in tokens):
            raise ValueError("embed() needs non-empty sequences")
        packing = pack_for_inference([t.numel() for t in tokens], max_tokens)
        per_residue = [None] * len(tokens)
        was_training = self.training
        self.eval()
        try:
            for batch in packing.batches:
                # the padding id is irrelevant: padding has seq_id -1, so no real token sees it
                input_ids, seq_ids = packed_rows(tokens, batch, packing.rows, packing.width, fill=EOS)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                    h = self.hidden_states(input_ids.to(device), seq_ids.to(device), layer).float().cpu()
                for i, row, offset in batch:
                    per_residue[i] = h[row, offset + 1:offset + tokens[i].numel() - 1].clone()
        finally:
            self.train(was_training)
        pooled = torch.stack([r.mean(dim=0) for r in per_residue]) if per_residue else torch.empty(0)
        return per_residue, pooled

    # ------------------------------------------------------------------------------------------------------------
    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters by optimiser role; each parameter appears exactly once.
        hidden: 2-D matrices inside the blocks (Muon). embed: token embedding (also the head when tied).
        value_embed: value-embedding tables. head: head matrices. scalar: every parameter with ndim < 2."""
        groups = {"hidden": [], "embed": [], "value_embed": [], "head": [], "scalar": []}
        for name, p in self.named_parameters():  # yields a tied matrix once, as token_embedding.weight
            if p.ndim < 2:
                groups["scalar"].append(p)
            else:
                groups[{"blocks": "hidden", "token_embedding": "embed", "value_embeds": "value_embed",
                        "head": "head"}[name.split(".")[0]]].append(p)
        return groups

    def num_parameters(self, non_embedding: bool = False) -> int:
        """Exact count of distinct parameters (a tied matrix counts once). non_embedding=True leaves out the
        lookup tables (token embedding and value embeddings), as Kaplan et al. arXiv:2001.08361 do."""
        groups = self.parameter_groups()
        skip = {"embed", "value_embed"} if non_embedding else set()
        return sum(p.numel() for name, ps in groups.items() if name not in skip for p in ps)

    def flops_per_token(self, seq_len: float) -> int:
        """Training FLOPs per token (forward + backward, backward = 2× forward), counting matrix multiplies as
        Hoffmann et al. (arXiv:2203.15556, app. F) do and Serrano et al. "Are protein language models compute
        optimal?" (arXiv:2406.07249, app. E) adopt for encoders; norms, softmax (3·H·S, < 0.2% here) and elementwise
        ops are not counted. seq_len is the attended length: with document masking, the mean length of
        the sequences (weighted by tokens, Σ L²/Σ L, for an exact count).

            forward = 2·V·D                                      embeddings (as a one-hot matmul)
                    + layers · ( 2·3·D·D                          QKV projections
                               + 2·S·D                            attention scores q·kᵀ (bidirectional: all S)
                               + 2·S·D                            attention-weighted values
                               + 2·D·D                            output projection
                               + 2·2·D·F )                        MLP up and down (F = intermediate_size)
                    + 2·D·V  [+ 2·D·D in esm2 mode: dense layer]  head
            training = 3 · forward
        with D = hidden_size, V = vocab_size, S = attended length.
        """
        c = self.config
        D, V, F_ = c.hidden_size, c.vocab_size, c.intermediate_size
        S = seq_len
        per_layer = 2 * 3 * D * D + 2 * S * D + 2 * S * D + 2 * D * D + 2 * 2 * D * F_
        head = 2 * D * V + (2 * D * D if c.architecture == "esm2" else 0)
        forward = 2 * V * D + c.num_hidden_layers * per_layer + head
        return int(round(3 * forward))
