"""Where a training process runs and how the model runs there: one process, or one rank of torchrun.

- `setup()`: torchrun's rank and world from the environment, the device (CUDA if present, else CPU), the process
  group (NCCL on CUDA, gloo on CPU) and a gloo group for host-side numbers -> `Placement`. On CPU it first turns on
  `flush_subnormals()`.
- `compile_and_wrap`: torch.compile (fullgraph on the FlexAttention path) and DDP, in that order.
"""
import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from model import PLM

DIST_TIMEOUT = datetime.timedelta(minutes=30)  # init_process_group: longer than any rank's compile


@dataclass
class Placement:
    """Where this process runs: torchrun's rank and world, the device, and the host-side (gloo) group."""
    distributed: bool
    rank: int
    world_size: int
    device: torch.device
    host_group: object = None  # small host-side sums (clock, signals, counts) never synchronise the GPU stream
    subnormals_flushed: bool | None = None  # CPU: whether every intra-op thread flushes subnormals (None on CUDA)

    @property
    def master(self) -> bool:
        return self.rank == 0

    def sum(self, values: list[float]) -> list[float]:
        """Host-side sum of small numbers over ranks."""
        if not self.distributed:
            return values
        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t, group=self.host_group)
        return t.tolist()


SUBNORMAL_BITS = 1 << 20  # the float32 with these bits, 1.47e-39, is below the smallest normal number, 1.18e-38


def subnormals(n: int) -> torch.Tensor:
    """n float32 subnormals, written as bits: converting a Python float would itself be flushed."""
    return torch.full((n,), SUBNORMAL_BITS, dtype=torch.int32).view(torch.float32)


def flush_subnormals() -> bool:
    """CPU: compute with subnormal floats as zero (flush-to-zero and denormals-are-zero) -> whether every thread does.

    Many x86 CPUs take a microcode path for subnormal operands: a matmul whose inputs are 1% subnormal ran 3x slower,
    100% subnormal 230x, on the Intel VM of sessions 16-19 (benchmarks/bench_subnormals.py). Training makes them
    where activations or probabilities underflow; the values lost are below 1.2e-38. The mode is per thread, and a
    thread inherits it when created, so this must run before the first parallel op starts torch's thread pools. A
    multiply spread over the intra-op threads checks it (False: one of them started earlier and keeps subnormals;
    BLAS's own threads cannot be checked this way). With one thread per process, as in every CPU benchmark here,
    only the main thread computes.
    """
    torch.set_flush_denormal(True)
    return subnormals_flushed()


def subnormals_flushed() -> bool:
    """Whether every intra-op thread flushes subnormals now: a multiply of 4M of them, which each thread shares."""
    return bool(((subnormals(1 << 22) * 1.0) == 0).all())


def setup() -> Placement:
    """One process, or one rank of torchrun (NCCL on CUDA, gloo on CPU)."""
    distributed = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    rank, world = (int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])) if distributed else (0, 1)
    local_rank = int(os.environ.get("LOCAL_RANK", 0)) if distributed else 0
    device = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    flushed = flush_subnormals() if device.type == "cpu" else None  # first: before any op starts the thread pool
    if device.type == "cuda":
        # Before CUDA's allocator starts: grow segments instead of caching fixed blocks, so fragmentation cannot
        # strand memory (modded-nanogpt does the same); the user's own setting wins.
        if "PYTORCH_CUDA_ALLOC_CONF" not in os.environ and "PYTORCH_ALLOC_CONF" not in os.environ:
            os.environ["PYTORCH_CUDA_ALLOC_CONF"] = "expandable_segments:True"
        torch.cuda.set_device(device)
        torch.set_float32_matmul_precision("high")  # TF32 for the few fp32 matmuls outside bf16 autocast
    if distributed:
        # Ranks wait in their first collective while others still compile (minutes for the default model).
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=DIST_TIMEOUT,
                                device_id=device if device.type == "cuda" else None)
    host_group = dist.new_group(backend="gloo") if distributed and device.type == "cuda" else None
    return Placement(distributed, rank, world, device, host_group, flushed)


def compile_and_wrap(raw_model: PLM, device: torch.device, compile_model: bool, distributed: bool):
    """-> (model for training steps, logits function for evaluation), compiled and DDP-wrapped as asked.

    fullgraph=True on the FlexAttention path, so a graph break fails loudly instead of silently splitting the
    model; the SDPA path runs its per-bucket kernels eagerly (torch.compiler.disable), so it cannot be one graph.
    DDP wraps the compiled module; torch.compile's DDPOptimizer then splits the graph at DDP's bucket boundaries,
    so each bucket's all-reduce starts while the backward of earlier layers runs (docs/TRAINING.md, "Gradient
    communication"; tests/test_gpu_path.py checks the split and that two ranks equal one process).
    """
    fullgraph = raw_model.attention_backend(device) == "flex"
    model, logits_fn = raw_model, raw_model.logits
    if compile_model:
        model = torch.compile(raw_model, dynamic=False, fullgraph=fullgraph)
        logits_fn = torch.compile(raw_model.logits, dynamic=False, fullgraph=fullgraph)
    if distributed:
        model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None, gradient_as_bucket_view=True)
    return model, logits_fn
