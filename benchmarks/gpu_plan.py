"""Plan a GPU run without a GPU: size, FLOPs, memory per GPU, communication per step, and the MFU to beat.

    python benchmarks/gpu_plan.py --yaml_path example_yamls/default.yaml                  # 8 GPUs
    python benchmarks/gpu_plan.py --yaml_path example_yamls/default.yaml --world_size 4 --row_length 8192

Any train.py key may follow (train.py's own parser reads them). Own options: --world_size (GPUs), --gpu (a key of
runlog.PEAK_FLOPS), --bus_gbps (NCCL bus bandwidth assumed for the communication times), --attended_length (skip
the data scan).

Nothing here runs the model for real or needs a GPU:
- parameters: counted on the model built under FakeTensorMode (no memory);
- FLOPs per token: `PLM.flops_per_token` at the data's attended length Σ L² / Σ L (the validation shards of the
  YAML's data when present, otherwise the shared Swiss-Prot validation FASTA as a stated proxy), cross-checked
  against torch's FlopCounterMode over the fake training step;
- activation memory: the tensors autograd saves for backward in one micro-batch at the real shape (rows × row
  length per GPU), traced under FakeTensorMode as the GPU path runs: bf16 autocast with CUDA's autocast policy
  (`cuda_autocast_policy`), FlexAttention's saved tensors (`FlexAttentionShapes`) and CUDA's fused RMSNorm
  (`FusedRMSNormShapes`), whose CPU counterparts save different tensors. It is the eager count: torch.compile's
  partitioner may recompute cheap elementwise ops and save less, so it is an upper bound for the compiled model;
- weights, gradients, optimizer state: from the parameter groups and optim.py's state (fp32 everywhere);
- communication: DDP's fp32 all-reduce of every gradient and Muon's all-gather of its bf16 updates (optim.py),
  as bytes each GPU sends in ring algorithms, and the time at --bus_gbps;
- the MFU needed to match SpeedrunningPLMs' 275.9k tokens/s per H100 (its README).
tests/test_gpu_path.py checks the trace against the process memory of a real CPU run, and the FLOPs against
FlopCounterMode on a real CPU run, at small shapes.
"""
import argparse
import collections
import contextlib
import dataclasses
import math
import sys
from pathlib import Path

import numpy as np
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.overrides import TorchFunctionMode
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import model as M  # noqa: E402  (after the sys.path line: benchmarks run from any directory)
import runlog  # noqa: E402
import train  # noqa: E402
from dataloader import DataConfig  # noqa: E402
from fasta import read_fasta  # noqa: E402
from validation import shard_sequences  # noqa: E402

# SpeedrunningPLMs README throughput table, default 133M model on 1×H100 SXM5 (Lambda): 275,900 tokens/s
# (github.com/Synthyra/SpeedrunningPLMs, README "Training Throughput").
PRIOR_ART_TOKENS_PER_S = 275_900
PROXY_FASTA = ROOT.parent / "shared" / "data" / "swissprot2014_sp50" / "sp50_valid.fasta.gz"
GIB = 2 ** 30

# Ops that CUDA autocast runs in fp32 (torch's autocast op lists: the "fp32" lists of the CUDA policy, which CPU
# autocast lacks); names as torch.overrides reports them, `square` included because it dispatches to pow.
CUDA_AUTOCAST_FP32 = frozenset({
    "acos", "asin", "cosh", "erfinv", "exp", "expm1", "log", "log10", "log2", "log1p", "reciprocal", "rsqrt",
    "sinh", "tan", "pow", "square", "softplus", "softmax", "log_softmax", "layer_norm", "group_norm", "rms_norm",
    "norm", "cosine_similarity", "cross_entropy", "nll_loss", "kl_div", "l1_loss", "smooth_l1_loss", "mse_loss",
    "binary_cross_entropy_with_logits", "cumprod", "cumsum", "dist", "cdist", "prod", "sum", "logsumexp",
    "scatter_add", "index_put", "renorm",
})


class cuda_autocast_policy(TorchFunctionMode):
    """Inside CPU bf16 autocast, also run the ops CUDA autocast keeps in fp32 in fp32 (inputs upcast), so a CPU
    trace sees the dtypes a GPU run has. CPU autocast already casts matmuls and linear layers to bf16."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__name__", "") in CUDA_AUTOCAST_FP32 and torch.is_autocast_enabled("cpu"):
            def up(a):
                return a.float() if isinstance(a, torch.Tensor) and a.is_floating_point() else a
            with torch.autocast("cpu", enabled=False):
                return func(*[up(a) for a in args], **{k: up(v) for k, v in kwargs.items()})
        return func(*args, **kwargs)


class FlexAttentionShapes(torch.autograd.Function):
    """Stands in for FlexAttention (whose backward does not run on CPU): same output and the tensors its autograd
    op saves (q, k, v, out and the fp32 log-sum-exp (R, H, T)); no arithmetic. Outputs are zeros, not empty, so
    that a real CPU run touches their memory as the kernel would (tests/test_gpu_path.py measures it)."""

    @staticmethod
    def forward(ctx, q, k, v):  # (R, H, T, Dh) each
        out = torch.zeros_like(q)
        ctx.save_for_backward(q, k, v, out, q.new_zeros(q.shape[:-1], dtype=torch.float32))
        return out

    @staticmethod
    def backward(ctx, grad):
        q, k, v, _, _ = ctx.saved_tensors
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def flex_attention_shapes(q, k, v, mask, soft_cap_value):
    """`model.attend` with FlexAttentionShapes: (R, T, H, Dh) in and out, as the flex path."""
    return FlexAttentionShapes.apply(*(t.transpose(1, 2) for t in (q, k, v))).transpose(1, 2)


class FusedRMSNormShapes(torch.autograd.Function):
    """Stands in for CUDA's fused RMSNorm (aten._fused_rms_norm): output in x's dtype, saves x and an fp32 rstd per
    row. On CPU, F.rms_norm of a bf16 tensor decomposes and saves fp32 copies instead."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x, x.new_zeros((*x.shape[:-1], 1), dtype=torch.float32))
        return torch.zeros_like(x)

    @staticmethod
    def backward(ctx, grad):
        return torch.empty_like(grad)


def fused_rms_norm_shapes(x):
    with torch.autocast(x.device.type, enabled=False):  # model.rms_norm runs outside autocast too
        return FusedRMSNormShapes.apply(x)


@contextlib.contextmanager
def patched(module, **names):
    old = {name: getattr(module, name) for name in names}
    for name, value in names.items():
        setattr(module, name, value)
    try:
        yield
    finally:
        for name, value in old.items():
            setattr(module, name, value)


@dataclasses.dataclass
class StepTrace:
    """One micro-batch's forward and backward, traced."""
    saved_bytes: dict            # dtype name -> bytes autograd saves for backward (distinct storages)
    saved_by_shape: list         # [(bytes, dtype name, shape)] largest groups first
    matmul_flops: int            # FlopCounterMode over forward + backward (attention not included: see flops)
    positions: int               # rows × row length

    @property
    def saved_total(self) -> int:
        return sum(self.saved_bytes.values())


def trace_step(model_config: M.ModelConfig, rows: int, row_length: int, *, gpu: bool = True, fake: bool = True,
               model: M.PLM | None = None, batch: tuple | None = None) -> StepTrace:
    """Trace one forward + backward of the training loss at (rows, row_length).

    gpu=True: as on the GPU (flex stand-in, fused RMSNorm stand-in, bf16 autocast with CUDA's policy).
    gpu=False: CPU ops in fp32, only attention replaced (by the flex stand-in, so both forms save the same there).
    fake=True builds model and batch under FakeTensorMode (no memory, any shape); fake=False runs for real on CPU
    with `model` and `batch` (input_ids, seq_ids, labels) given, for checking the tracer against the CPU.
    """
    saved, by_shape, seen = collections.Counter(), collections.Counter(), set()
    params: set[int] = set()

    def pack(t):
        key = t.untyped_storage()._cdata
        if key not in seen and key not in params:
            seen.add(key)
            nbytes = t.untyped_storage().nbytes()
            saved[str(t.dtype).removeprefix("torch.")] += nbytes
            by_shape[(str(t.dtype).removeprefix("torch."), tuple(t.shape))] += nbytes
        return t

    swaps = dict(attend=flex_attention_shapes, **(dict(rms_norm=fused_rms_norm_shapes) if gpu else {}))
    with patched(M, **swaps), (FakeTensorMode() if fake else contextlib.nullcontext()):
        if fake:
            # shapes only (nothing is allocated); the flex path, as on CUDA (its block mask needs no data)
            model = M.PLM(dataclasses.replace(model_config, attention_backend="flex"))
            ids = torch.zeros(rows, row_length, dtype=torch.int64)
            batch = (ids, torch.zeros(rows, row_length, dtype=torch.int32), ids)
        params.update(p.untyped_storage()._cdata for p in model.parameters())
        precision = (torch.autocast("cpu", dtype=torch.bfloat16) if gpu else contextlib.nullcontext())
        policy = cuda_autocast_policy() if gpu else contextlib.nullcontext()
        with FlopCounterMode(display=False) as flops:
            with precision, policy, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                loss, _ = model(*batch)
            loss.backward()
    largest = sorted(((b, dt, shape) for (dt, shape), b in by_shape.items()), reverse=True)
    return StepTrace(dict(saved), largest, flops.get_total_flops(), rows * row_length)


# ----------------------------------------------------------------------------------------------------------------
# The other numbers


def attended_length(cfg: DataConfig) -> tuple[float, str]:
    """Σ L² / Σ L of the sequences the run validates on (cropped to max_length), and where the lengths came from."""
    paths = sorted(Path(cfg.data_dir).glob(f"{cfg.data_name}_valid_*.bin"))
    if paths:
        lengths = np.array([t.size for t in shard_sequences(cfg.data_dir, cfg.data_name, "valid")])
        source = f"{len(paths)} validation shard(s) of {cfg.data_dir}/{cfg.data_name}"
    elif PROXY_FASTA.is_file():
        lengths = np.array([len(record.residues) + 2 for record in read_fasta(PROXY_FASTA)])  # <cls> … <eos>
        source = f"PROXY: {cfg.data_dir} has no validation shards here; lengths of {PROXY_FASTA.name}"
    else:
        return float(cfg.max_length), "no data found: max_length (an upper bound)"
    lengths = np.minimum(lengths, cfg.max_length).astype(np.float64)
    return float((lengths ** 2).sum() / lengths.sum()), source


def ring_bytes(kind: str, payload: int, world: int) -> float:
    """Bytes each GPU sends: ring all-reduce 2(W-1)/W · payload; all-gather (W-1)/W · payload (the gathered size)."""
    if world == 1:
        return 0.0
    return (2 if kind == "all_reduce" else 1) * (world - 1) / world * payload


def muon_gather_bytes(hidden: list[torch.Tensor], world: int) -> int:
    """Size of Muon's gathered bf16 updates per step: per shape bucket ⌈n/W⌉·W matrices (optim.Muon pads)."""
    counts = collections.Counter(tuple(p.shape) for p in hidden)
    return sum(math.ceil(n / world) * world * math.prod(shape) * 2 for shape, n in counts.items())


def plan(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], add_help=True)
    parser.add_argument("--world_size", type=int, default=8, help="GPUs (data-parallel ranks)")
    parser.add_argument("--gpu", default="H100", choices=sorted(runlog.PEAK_FLOPS), help="for the MFU")
    parser.add_argument("--bus_gbps", type=float, default=360.0,
                        help="NCCL bus bandwidth in GB/s for the communication times (360: a conservative figure "
                             "for 8×H100 SXM over NVLink; measure yours with nccl-tests)")
    parser.add_argument("--attended_length", type=float, default=None, help="Σ L²/Σ L; default: from the data")
    own, rest = parser.parse_known_args(argv)
    cfg, _ = train.parse_config(rest)
    W = own.world_size
    try:
        rows = cfg.data.rows_per_micro(W)
    except ValueError as e:
        raise train.ConfigError(str(e)) from None
    mcfg = cfg.model

    with FakeTensorMode():
        shapes = M.PLM(mcfg)
        groups = {name: [p for p in ps] for name, ps in shapes.parameter_groups().items()}
        n_params = shapes.num_parameters()
        n_non_embedding = shapes.num_parameters(non_embedding=True)
    muon = cfg.optim.recipe == "speedrun"
    n_hidden = sum(p.numel() for p in groups["hidden"]) if muon else 0
    n_adam = n_params - n_hidden

    if own.attended_length is not None:
        S, source = own.attended_length, "--attended_length"
    else:
        S, source = attended_length(cfg.data)
    flops_per_token = shapes.flops_per_token(S)

    trace = trace_step(mcfg, rows, cfg.data.row_length)
    # FlopCounterMode saw the matmuls of every position (attention stood in): compare per position with the
    # formula's non-attention part (which counts the embedding lookup as a matmul, as Hoffmann et al. do).
    D, V, L = mcfg.hidden_size, mcfg.vocab_size, mcfg.num_hidden_layers
    attention = 3 * L * 4 * S * D
    counted_per_position = trace.matmul_flops / trace.positions
    formula_matmuls = flops_per_token - attention - 3 * 2 * V * D

    weights = 4 * n_params
    grads = 4 * n_params
    optimizer_state = 4 * n_hidden + 8 * n_adam  # Muon momentum fp32; Adam exp_avg + exp_avg_sq fp32
    gathered = muon_gather_bytes(groups["hidden"], W) if muon else 0
    all_reduce = ring_bytes("all_reduce", 4 * n_params, W)
    all_gather = ring_bytes("all_gather", gathered, W)
    bus = own.bus_gbps * 1e9
    peak = runlog.PEAK_FLOPS[own.gpu]
    tokens_per_gpu_step = rows * cfg.data.row_length * cfg.data.grad_accum
    needed_mfu = PRIOR_ART_TOKENS_PER_S * flops_per_token / peak
    return dict(
        config=cfg, world_size=W, gpu=own.gpu, rows=rows, row_length=cfg.data.row_length,
        grad_accum=cfg.data.grad_accum,
        n_params=n_params, n_non_embedding=n_non_embedding, n_hidden=n_hidden, n_adam=n_adam,
        attended_length=S, attended_length_source=source, flops_per_token=flops_per_token,
        attention_flops_per_token=attention, counted_matmul_flops_per_position=counted_per_position,
        formula_matmul_flops_per_token=formula_matmuls, trace=trace,
        weights_bytes=weights, grads_bytes=grads, optimizer_bytes=optimizer_state, muon_gathered_bytes=gathered,
        memory_bytes=weights + grads + optimizer_state + trace.saved_total + gathered,
        all_reduce_bytes=all_reduce, all_gather_bytes=all_gather,
        all_reduce_ms=all_reduce / bus * 1e3, all_gather_ms=all_gather / bus * 1e3,
        tokens_per_gpu_step=tokens_per_gpu_step, needed_mfu=needed_mfu,
        step_ms_at_prior_art=tokens_per_gpu_step / PRIOR_ART_TOKENS_PER_S * 1e3,
    )


def report(r: dict) -> str:
    cfg, t = r["config"], r["trace"]
    gib = lambda b: f"{b / GIB:.2f} GiB"  # noqa: E731
    lines = [
        f"run: {r['world_size']} × {r['gpu']}, {r['rows']} rows × {r['row_length']:,} tokens per micro-batch per GPU"
        f" × grad_accum {r['grad_accum']} ({cfg.data.batch_size:,} tokens per step)",
        f"parameters: {r['n_params']:,} ({r['n_non_embedding']:,} non-embedding); Muon {r['n_hidden']:,}, "
        f"Adam {r['n_adam']:,}",
        f"attended length Σ L²/Σ L: {r['attended_length']:.1f} tokens ({r['attended_length_source']})",
        f"FLOPs per token (training): {r['flops_per_token'] / 1e6:.1f} M = 6N-style matmuls "
        f"{(r['flops_per_token'] - r['attention_flops_per_token']) / 1e6:.1f} M + attention "
        f"{r['attention_flops_per_token'] / 1e6:.1f} M",
        f"  check: FlopCounterMode on the traced step counts {r['counted_matmul_flops_per_position'] / 1e6:.2f} M "
        f"matmul FLOPs per position; the formula's matmuls without the embedding lookup: "
        f"{r['formula_matmul_flops_per_token'] / 1e6:.2f} M",
        f"memory per GPU: weights {gib(r['weights_bytes'])} + gradients {gib(r['grads_bytes'])} + optimizer state "
        f"{gib(r['optimizer_bytes'])} + Muon's gathered updates {gib(r['muon_gathered_bytes'])} + saved activations "
        f"{gib(t.saved_total)} = {gib(r['memory_bytes'])} before transient buffers",
        "  saved activations by dtype (eager trace, bf16 autocast as on CUDA): "
        + ", ".join(f"{dt} {gib(b)}" for dt, b in sorted(t.saved_bytes.items(), key=lambda kv: -kv[1])),
        "  largest: " + "; ".join(f"{dt} {list(shape)} {gib(b)}" for b, dt, shape in t.saved_by_shape[:4]),
        f"communication per step per GPU: DDP fp32 all-reduce {r['all_reduce_bytes'] / 1e6:,.0f} MB "
        f"({r['all_reduce_ms']:.2f} ms at the assumed bus bandwidth, overlapped with the backward) + Muon bf16 "
        f"all-gather {r['all_gather_bytes'] / 1e6:,.0f} MB ({r['all_gather_ms']:.2f} ms)",
        f"to beat SpeedrunningPLMs' {PRIOR_ART_TOKENS_PER_S / 1e3:.1f}k tokens/s per H100: MFU > "
        f"{100 * r['needed_mfu']:.1f}% on {r['gpu']} (bf16 dense peak {runlog.PEAK_FLOPS[r['gpu']] / 1e12:.0f} "
        f"TFLOP/s), i.e. a step in < {r['step_ms_at_prior_art']:.0f} ms",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    print(report(plan(sys.argv[1:] if argv is None else argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
