"""First-minute self-check of the GPU path: run it on the machine, before a record attempt.

    python benchmarks/gpu_check.py                                          # one GPU; without a GPU, the CPU form
    torchrun --standalone --nproc_per_node=8 benchmarks/gpu_check.py        # every GPU of the node
    python benchmarks/gpu_check.py --yaml_path example_yamls/default.yaml --row_length 8192   # any train.py keys

One line per check, then a verdict; the exit code is 0 iff every check passes on every rank.
  flex_vs_sdpa    a small model compiled with fullgraph=True on the FlexAttention path (block mask included) against
                  the eager SDPA path on the same weights and packed rows: loss and every parameter's gradient, fp32.
  newton_schulz   Muon's bf16 Newton–Schulz (compiled on CUDA, as optim.Muon runs it) against the fp32 iteration.
  collectives     all-reduce and all-gather (optim.all_gather_async, Muon's path) over the ranks with train.py's
                  backend (NCCL on CUDA, gloo on CPU), against sums computed on the CPU.
  loader          the YAML's training loader (its data, or the embedded data/demo when that is absent) delivers
                  real tokens faster than SpeedrunningPLMs' whole trainer consumes them (275.9k tokens/s per H100).
  step            the YAML's model, compiled and DDP-wrapped by distributed.compile_and_wrap, optimisers from
                  optim.build_optimizers, bf16 autocast: warm-up, then timed steps on the loader's batch; reports
                  tokens/s per GPU and MFU against SpeedrunningPLMs' rate (slower is a warning, not a failure).
Without CUDA the CPU form runs by itself, reduced: flex forward only (its backward does not run on a CPU), bf16
Newton–Schulz run on the CPU, gloo with one rank, the loader with no workers, and a small eager model for one step.
tests/test_gpu_path.py runs the CPU form, so the script cannot rot.
"""
import argparse
import contextlib
import dataclasses
import datetime
import math
import os
import socket
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import dataloader  # noqa: E402  (after the sys.path lines: benchmarks run from any directory)
from distributed import compile_and_wrap  # noqa: E402
import optim  # noqa: E402
import runlog  # noqa: E402
import train  # noqa: E402
from gpu_plan import PRIOR_ART_TOKENS_PER_S  # noqa: E402
from model import PLM, ModelConfig  # noqa: E402
from shards import find_shards  # noqa: E402


@dataclasses.dataclass
class Check:
    name: str
    ok: bool
    detail: str
    warning: str = ""

    def line(self) -> str:
        status = "PASS" if self.ok else "FAIL"
        return f"[{status}] {self.name:<14} {self.detail}" + (f"  WARNING: {self.warning}" if self.warning else "")


def packed_rows(rows: int, width: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random protein-like packed rows: documents of 20..300 tokens side by side, a padding tail, 15% scored."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, 24, (rows, width), generator=g)
    seq = torch.full((rows, width), -1, dtype=torch.int32)
    for r in range(rows):
        col, s = 0, 0
        while True:
            n = int(torch.randint(20, 300, (1,), generator=g))
            if col + n > width - 40 * r:  # rows end with different padding tails
                break
            seq[r, col:col + n] = s
            col, s = col + n, s + 1
    labels = torch.where((torch.rand(rows, width, generator=g) < 0.15) & (seq >= 0), ids, -100)
    return ids, seq, labels


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.float() - want.float()).norm() / want.float().norm().clamp(min=1e-30))


# ----------------------------------------------------------------------------------------------------------------
# The checks


def check_flex_vs_sdpa(device: torch.device) -> Check:
    on_gpu = device.type == "cuda"  # the CPU form is smaller: compiling takes most of its time
    config = ModelConfig(hidden_size=128 if on_gpu else 64, num_attention_heads=2, num_hidden_layers=2,
                         value_embeddings=1, soft_logit_cap=30.0)
    width = 1024 if on_gpu else 256
    torch.manual_seed(0)
    sdpa = PLM(dataclasses.replace(config, attention_backend="sdpa"))
    sdpa.init_weights()
    with torch.no_grad():  # init zeroes the output projections: perturb so that every gradient is non-trivial
        for p in sdpa.parameters():
            p.add_(0.02 * torch.randn_like(p))
    flex = PLM(dataclasses.replace(config, attention_backend="flex"))
    flex.load_state_dict(sdpa.state_dict())
    sdpa.to(device), flex.to(device)
    batch = [t.to(device) for t in packed_rows(2, width, seed=1)]
    if device.type != "cuda":  # FlexAttention's backward is CUDA-only: the CPU form checks the forward
        with torch.no_grad():
            got = torch.compile(flex.logits, dynamic=False, fullgraph=True)(*batch[:2])
            want = sdpa.logits(*batch[:2])
        err = relative_error(got, want)
        return Check("flex_vs_sdpa", err < 1e-4, f"compiled flex forward (fullgraph) vs SDPA on cpu: logits "
                                                 f"rel. error {err:.1e} (backward: CUDA only)")
    compiled = torch.compile(flex, dynamic=False, fullgraph=True)  # fp32 matmuls (no TF32: this process never
    losses = []                                                    # sets float32_matmul_precision)
    for model in (compiled, sdpa):
        loss, n = model(*batch)
        (loss / n).backward()
        losses.append(float(loss / n))
    grad_err = max(relative_error(a.grad, b.grad) for a, b in zip(flex.parameters(), sdpa.parameters()))
    loss_err = abs(losses[0] - losses[1]) / abs(losses[1])
    return Check("flex_vs_sdpa", loss_err < 1e-4 and grad_err < 1e-2,
                 f"compiled flex (fullgraph) vs SDPA, fp32, forward + backward: loss rel. error {loss_err:.1e}, "
                 f"worst gradient rel. error {grad_err:.1e}")


def check_newton_schulz(device: torch.device) -> Check:
    g = torch.Generator().manual_seed(2)
    shape = (768, 2048) if device.type == "cuda" else (128, 384)
    G = torch.randn(4, *shape, generator=g).to(device)
    fp32 = optim.newton_schulz(G, 5, dtype=torch.float32)
    if device.type == "cuda":
        muon = optim.Muon([torch.nn.Parameter(torch.zeros(shape, device=device))])
        bf16 = muon._orthogonalise(G, 5)  # the compiled bf16 path the optimiser takes
        where = "compiled on cuda"
    else:
        bf16 = optim.newton_schulz(G, 5, dtype=torch.bfloat16)
        where = "on cpu"
    err = relative_error(bf16, fp32)
    ok = bf16.dtype == torch.bfloat16 and err < 0.05 and bool(torch.isfinite(bf16).all())
    return Check("newton_schulz", ok, f"bf16 ({where}) vs fp32, 4 × {shape[0]}×{shape[1]}: rel. difference "
                                      f"{err:.3f} (bound 0.05)")


def check_collectives(device: torch.device, rank: int, world: int) -> Check:
    n = 1 << 20
    base = torch.arange(n, dtype=torch.float32) % 1024  # exact in fp32 and bf16 sums of a few ranks
    mine = (base * (rank + 1)).to(device)
    dist.all_reduce(mine)
    want = base * (world * (world + 1) / 2)
    reduce_ok = torch.equal(mine.cpu(), want)
    share = (base[:4096] + rank).to(device, torch.bfloat16)
    gathered = torch.empty(world * 4096, dtype=torch.bfloat16, device=device)
    optim.all_gather_async(gathered, share).wait()
    want_gather = torch.cat([(base[:4096] + r).to(torch.bfloat16) for r in range(world)])
    gather_ok = torch.equal(gathered.cpu(), want_gather)
    return Check("collectives", reduce_ok and gather_ok,
                 f"{dist.get_backend()} over {world} rank(s): fp32 all-reduce of {n:,} values "
                 f"{'exact' if reduce_ok else 'WRONG'}, bf16 all-gather {'exact' if gather_ok else 'WRONG'}")


def check_loader(cfg: train.Config, device: torch.device, rank: int, world: int) -> tuple[Check, dict | None]:
    data = cfg.data
    try:
        find_shards(data.data_dir, data.data_name, "train")
        where = f"{data.data_dir}/{data.data_name}"
    except FileNotFoundError:
        data = dataclasses.replace(data, data_dir=str(ROOT / "data" / "demo"), data_name="demo")
        where = "data/demo (the YAML's data is not here)"
    if device.type != "cuda":
        data = dataclasses.replace(data, num_workers=0)
    workers = data.num_workers
    loader = dataloader.TrainLoader(data, seed=cfg.run.seed, world_size=world, rank=rank,
                                    pin_memory=device.type == "cuda")
    stream = iter(loader)
    _, _, first = next(stream)  # start-up (worker processes) is not counted
    tokens, batches, start = 0, 0, time.perf_counter()
    while batches < 50 and (batches < 3 or time.perf_counter() - start < 3.0):
        _, _, batch = next(stream)
        tokens += int((batch["seq_ids"] >= 0).sum())
        batches += 1
    rate = tokens / (time.perf_counter() - start)
    stream.close()  # stops the worker processes
    ok = rate >= PRIOR_ART_TOKENS_PER_S
    return Check("loader", ok, f"{where}: {rate / 1e3:,.0f}k real tokens/s per rank with {workers} worker(s) "
                               f"(needs >= {PRIOR_ART_TOKENS_PER_S / 1e3:.1f}k)"), first


def check_step(cfg: train.Config, device: torch.device, batch: dict | None, world: int, distributed: bool) -> Check:
    on_gpu = device.type == "cuda"
    if batch is None:  # the loader check failed: random packed rows of the micro-batch's shape
        rows = cfg.data.rows_per_micro(world)
        batch = dict(zip(("input_ids", "seq_ids", "labels"), packed_rows(rows, cfg.data.row_length, seed=3)))
    model_config = cfg.model
    if not on_gpu:  # the CPU form: a small model, eager (the default model's step takes minutes on a CPU)
        model_config = dataclasses.replace(model_config, hidden_size=64, num_attention_heads=2, num_hidden_layers=2,
                                           value_embeddings=1)
    torch.manual_seed(0)
    raw = PLM(model_config)
    raw.init_weights()
    raw.to(device)
    model, _ = compile_and_wrap(raw, device, compile_model=on_gpu, distributed=distributed)
    optimizers = optim.build_optimizers(raw.parameter_groups(), cfg.optim, all_params=raw.parameters(),
                                        fused=True if on_gpu else None)
    if not on_gpu:  # the CPU form: one row, cropped
        batch = {key: value[:1, :4096] for key, value in batch.items()}
    batch = dataloader.to_device(batch, device)
    precision = torch.autocast("cuda", dtype=torch.bfloat16) if on_gpu else contextlib.nullcontext()

    def step() -> float:
        with precision:
            loss, n = model(batch["input_ids"], batch["seq_ids"], batch["labels"])
        (loss / n).backward()
        for opt in optimizers:
            opt.step()
            opt.zero_grad(set_to_none=True)
        return float(loss.detach() / n)

    warm, timed = (3, 5) if on_gpu else (0, 1)
    t_compile = time.perf_counter()
    try:
        for _ in range(warm):
            step()
    except torch.cuda.OutOfMemoryError:
        return Check("step", False, f"out of memory at {tuple(batch['input_ids'].shape)} tokens per GPU: on fewer "
                                    "GPUs than the YAML plans for, raise --grad_accum as train.py needs (e.g. "
                                    "--grad_accum 8 for default.yaml on one GPU); benchmarks/gpu_plan.py sizes it")
    t_compile = time.perf_counter() - t_compile
    if on_gpu:
        torch.cuda.synchronize()
    start = time.perf_counter()
    losses = [step() for _ in range(timed)]
    if on_gpu:
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / timed
    tokens = int((batch["seq_ids"] >= 0).sum())
    rate = tokens / seconds
    flops = raw.flops_per_token(runlog.attended_length([{k: v.cpu() for k, v in batch.items()}]))
    peak = runlog.peak_flops(device)
    mfu = f"MFU {100 * rate * flops / peak:.1f}%" if peak else "MFU n/a (unknown peak)"
    ok = all(math.isfinite(loss) for loss in losses)
    shape = f"{tuple(batch['input_ids'].shape)}"
    if on_gpu:
        detail = (f"{raw.num_parameters():,} parameters, {shape} per GPU × {world} GPU(s), compiled "
                  f"({t_compile:.0f} s incl. {warm} warm-up steps): {seconds * 1e3:.0f} ms/step, "
                  f"{rate / 1e3:,.1f}k tokens/s per GPU, {mfu}; loss {losses[-1]:.3f}")
        warning = "" if rate >= PRIOR_ART_TOKENS_PER_S else \
            f"slower than SpeedrunningPLMs' {PRIOR_ART_TOKENS_PER_S / 1e3:.1f}k tokens/s per H100"
        return Check("step", ok, detail, warning)
    return Check("step", ok, f"CPU form: {raw.num_parameters():,}-parameter model, eager, {shape}: "
                             f"{rate / 1e3:,.1f}k tokens/s, loss {losses[-1]:.3f} (the default model's speed: "
                             "on a GPU)")


# ----------------------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(argv: list[str]) -> int:
    rest = argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_known_args(argv)[1]  # for --help
    cfg, _ = train.parse_config(rest or ["--yaml_path", str(ROOT / "example_yamls" / "default.yaml")])
    distributed = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    rank = int(os.environ.get("RANK", 0))
    world = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not distributed:  # one rank: a process group of one still runs the real collective code
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_port()))
        os.environ.setdefault("RANK", "0")
        os.environ.setdefault("WORLD_SIZE", "1")
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=datetime.timedelta(minutes=30),
                            device_id=device if device.type == "cuda" else None)
    say = print if rank == 0 else (lambda *a, **k: None)
    say(f"gpu_check: torch {torch.__version__}, CUDA {torch.version.cuda}, "
        f"{torch.cuda.get_device_name(device) if device.type == 'cuda' else 'no GPU: the reduced CPU form'}, "
        f"{world} rank(s); config {cfg.run.log_name or 'defaults'}")
    checks = []
    batch = None
    for name, fn in (("flex_vs_sdpa", lambda: check_flex_vs_sdpa(device)),
                     ("newton_schulz", lambda: check_newton_schulz(device)),
                     ("collectives", lambda: check_collectives(device, rank, world)),
                     ("loader", lambda: check_loader(cfg, device, rank, world)),
                     ("step", lambda: check_step(cfg, device, batch, world, distributed))):
        t0 = time.perf_counter()
        try:
            result = fn()
        except Exception as e:  # a crash is this check's failure; report it and go on to the next check
            result = Check(name, False, f"raised {type(e).__name__}: {str(e).splitlines()[0][:300]}")
        if isinstance(result, tuple):
            result, batch = result
        checks.append(result)
        say(result.line() + f"  ({time.perf_counter() - t0:.1f} s)", flush=True)
        if rank != 0 and not result.ok:
            print(f"rank {rank}: {result.line()}", flush=True)
    failed = [c.name for c in checks if not c.ok]
    everyone = [None] * world
    dist.all_gather_object(everyone, failed)
    failures = sorted({f"{name} (rank {r})" for r, names in enumerate(everyone) for name in names})
    say(f"verdict: {'PASS: every check passed on every rank' if not failures else 'FAIL: ' + ', '.join(failures)}")
    dist.destroy_process_group()
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
