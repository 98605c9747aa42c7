"""The GPU path, checked on a CPU: what each test would have caught is in its docstring.

bf16 residual stream, saved-activation bytes at the real shape (FakeTensor), the block mask built from block
ranges, one compiled graph over batches (fullgraph=True), at most two compiles in evaluate.py's MLM path, fixed
inference shapes, compiled + DDP-wrapped training on two gloo ranks against one process, Muon without
`dist.all_gather_single`, benchmarks/gpu_plan.py against the CPU, and benchmarks/gpu_check.py's CPU form.
torch.compile runs on tiny models only: twice in this process, twice in each of the two gloo ranks, and once in
gpu_check.py's subprocess (about 4 minutes in all on 2 busy cores, most of it compiling).
"""
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist

import evaluate
import model as M
import distributed
import optim
import train
from model import PLM, ModelConfig
from test_model import ALL_ON, build, packed_batch, tiny
from conftest import free_port, run_processes
from test_optim import make_muon, make_params, run_muon

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import gpu_plan  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def default_run() -> tuple[train.Config, int]:
    """example_yamls/default.yaml as train.py parses it, and its rows per micro-batch per GPU on 8 GPUs."""
    cfg, _ = train.parse_config(["--yaml_path", str(ROOT / "example_yamls" / "default.yaml")])
    return cfg, cfg.data.rows_per_micro(8)


# ---------------------------------------------------------------------------------------------------------------
# 1. The residual stream runs in bf16 under autocast


def test_residual_stream_is_bf16_under_autocast_and_fp32_without():
    """Would have caught: fp32 embedding lookups making x0, x, the UNet skips and every norm and residual add fp32
    under bf16 autocast. Checked at every block's inputs and output, for the skips and the value embeddings."""
    model = build(tiny(**ALL_ON))
    ids, seq, labels = packed_batch([[12, 20], [30]], 32, seed=3)
    seen = []

    def record(module, args, output):
        x, x0, _, _, value_embedding = args
        seen.append((x.dtype, x0.dtype, output.dtype,
                     value_embedding.dtype if value_embedding is not None else None))

    hooks = [block.register_forward_hook(record) for block in model.blocks]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = model(ids, seq, labels)
        hidden = model.hidden_states(ids, seq, layer=0)
    bf16 = torch.bfloat16
    assert seen and all(dtypes[:3] == (bf16, bf16, bf16) and dtypes[3] in (bf16, None) for dtypes in seen), seen
    assert hidden.dtype == bf16 and loss.dtype == torch.float32
    seen.clear()
    loss32, _ = model(ids, seq, labels)  # no autocast: plain fp32 everywhere (the golden CPU runs)
    assert all(dtypes[:3] == (torch.float32,) * 3 for dtypes in seen) and loss32.dtype == torch.float32
    for hook in hooks:
        hook.remove()


def test_saved_activations_at_the_default_shape_are_bf16():
    """Would have caught the same at the real shape: a FakeTensor trace of one micro-batch of default.yaml
    (4 rows × 16,384 tokens per GPU, 24 layers of 768) as the GPU runs it. Before the fix: 27.4 GiB of the 58.8 GiB
    saved for backward were fp32 (residual-width tensors 14.1 GiB, the ReLU² input 12.0 GiB); after: 0.17 GiB
    (rotary tables, norm statistics, attention log-sum-exp, the 33-wide logits)."""
    cfg, rows = default_run()
    trace = gpu_plan.trace_step(cfg.model, rows, cfg.data.row_length)
    assert (rows, cfg.data.row_length) == (4, 16384)
    assert trace.saved_bytes["float32"] < 0.5 * gpu_plan.GIB
    assert trace.saved_total < 45 * gpu_plan.GIB
    widths = (cfg.model.hidden_size, cfg.model.intermediate_size)
    assert not [s for s in trace.saved_by_shape if s[1] == "float32" and s[2] and s[2][-1] in widths]


# ---------------------------------------------------------------------------------------------------------------
# 6. The block mask from block ranges


@pytest.mark.parametrize("T", [300, 512, 700])
def test_block_mask_from_block_ranges_equals_create_block_mask(T):
    """document_block_mask builds the FlexAttention BlockMask from per-block id ranges; torch's create_block_mask
    evaluates the predicate on every position pair. Same tiles, same order, same dense mask."""
    from torch.nn.attention.flex_attention import create_block_mask

    g = torch.Generator().manual_seed(T)
    seq = torch.full((3, T), -1, dtype=torch.int32)
    for r in range(3):
        col, s = 0, 0
        while (n := int(torch.randint(1, 300, (1,), generator=g))) + col <= T - 37 * r:
            seq[r, col:col + n], col, s = s, col + n, s + 1
    mine = M.document_block_mask(seq)

    def same(b, h, q, k):
        return (seq[b, q] == seq[b, k]) & (seq[b, q] >= 0)

    ref = create_block_mask(same, 3, None, T, T, device="cpu")
    for field in ("kv_num_blocks", "kv_indices", "full_kv_num_blocks", "full_kv_indices", "q_num_blocks",
                  "full_q_num_blocks"):
        assert torch.equal(getattr(mine, field), getattr(ref, field)), field
    assert torch.equal(mine.to_dense(), ref.to_dense()) and mine.seq_lengths == ref.seq_lengths


# ---------------------------------------------------------------------------------------------------------------
# 3, 4. One compiled graph; fixed shapes in evaluation


class CountingInductor:
    """A torch.compile backend that counts the graphs it compiles, then compiles them with Inductor."""

    def __init__(self):
        self.graphs = 0

    def __call__(self, gm, example_inputs):
        from torch._inductor.compile_fx import compile_fx
        self.graphs += 1
        return compile_fx(gm, example_inputs)


def flex_and_sdpa(config: ModelConfig, seed: int = 0) -> tuple[PLM, PLM]:
    sdpa = build(config, seed=seed)
    flex = PLM(dataclasses.replace(config, attention_backend="flex"))
    flex.load_state_dict(sdpa.state_dict())
    return flex, sdpa


def test_compiled_flex_model_is_one_graph_over_document_counts():
    """Would have caught: a graph break silently splitting the compiled model (no fullgraph=True), and a recompile
    per batch. The training forward (loss) on the flex path, compiled as distributed.compile_and_wrap does (fullgraph,
    static shapes) under bf16 autocast, over packed rows holding 1 to 9 sequences: one graph, and the loss of the
    eager SDPA path (the forward: FlexAttention's backward does not run on a CPU)."""
    flex, sdpa = flex_and_sdpa(tiny(num_hidden_layers=2, value_embeddings=1, soft_logit_cap=10.0))
    backend = CountingInductor()
    compiled = torch.compile(flex, dynamic=False, fullgraph=True, backend=backend)
    for seed, lengths in enumerate(([[200], []], [[40, 60, 30], [128]], [[20] * 9, [25, 25]])):
        ids, seq, labels = packed_batch(lengths, 256, seed=seed)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            got, n = compiled(ids, seq, labels)
            want, _ = sdpa(ids, seq, labels)
        assert got.dtype == torch.float32
        assert abs(got.item() - want.item()) / n.item() < 0.02 * max(1.0, want.item() / n.item())
    assert backend.graphs == 1


def test_evaluate_mlm_compiles_at_most_twice_and_matches_sdpa():
    """Would have caught: evaluate.py recompiling flex for every padded batch width (8 compiles for 8 batches,
    then an eager fallback that materialises the scores). Sequences of many lengths go through mlm_metrics in
    packed batches of one shape: at most 2 compiled graphs (1 here: the block mask needs no compile), and the
    same metrics as the SDPA path."""
    from torch._dynamo.utils import counters

    flex, sdpa = flex_and_sdpa(tiny(num_hidden_layers=2, value_embeddings=1), seed=5)
    rng = np.random.default_rng(0)
    sequences = ["".join(rng.choice(list("ACDEFGHIKLMNPQRSTVWY"), size=int(n))) for n in rng.integers(5, 300, 40)]
    before = counters["stats"]["unique_graphs"]
    got = evaluate.mlm_metrics(flex, sequences, seed=1, batch_tokens=1024)
    compiles = counters["stats"]["unique_graphs"] - before
    want = evaluate.mlm_metrics(sdpa, sequences, seed=1, batch_tokens=1024)
    assert 1 <= compiles <= 2
    assert got["n_masked"] == want["n_masked"] and got["loss"] == pytest.approx(want["loss"], rel=1e-5)
    assert got["accuracy"] == pytest.approx(want["accuracy"])


def test_inference_batches_have_one_shape():
    """pack_for_inference: every batch (R, T), every sequence placed once, rows never overfull, ids rise by one
    per sequence along a row (which document_block_mask's exactness relies on); embed runs one shape."""
    lengths = [int(n) for n in np.random.default_rng(1).integers(3, 700, 60)]
    packing = M.pack_for_inference(lengths, 4096)
    assert packing.width == 768 and packing.rows == 5
    placed = sorted(i for batch in packing.batches for i, _, _ in batch)
    assert placed == list(range(60))
    pieces = [torch.arange(n) for n in lengths]
    for batch in packing.batches:
        values, seq_ids = M.packed_rows(pieces, batch, packing.rows, packing.width, fill=-1)
        assert values.shape == seq_ids.shape == (5, 768)
        for row in seq_ids:
            ids = row[row >= 0]
            assert torch.equal(ids.unique_consecutive(), torch.arange(int(ids.max()) + 1 if ids.numel() else 0))
    model = build(tiny())
    shapes, original = set(), model.hidden_states

    def recording(input_ids, seq_ids, layer=None):
        shapes.add(tuple(input_ids.shape))
        return original(input_ids, seq_ids, layer)

    model.hidden_states = recording
    sequences = ["M" * n for n in (5, 50, 130, 7, 300, 64, 1)]
    per_residue, _ = model.embed(sequences, max_tokens=512)
    assert shapes == {(1, 384)} and [r.shape[0] for r in per_residue] == [5, 50, 130, 7, 300, 64, 1]


# ---------------------------------------------------------------------------------------------------------------
# 2, 5. Two gloo ranks: compiled + DDP training equals one process; Muon without all_gather_single


# Width 384: a 384 × 1024 MLP matrix (1.6 MB) exceeds DDP's first bucket (1 MB), so DDPOptimizer has a split to make.
DDP_CONFIG = dict(hidden_size=384, num_attention_heads=2, num_hidden_layers=2, value_embeddings=1)
DDP_STEPS = 2


def ddp_batches() -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """One global batch of 4 rows per step: rank r takes rows 2r, 2r+1."""
    return [packed_batch([[60, 100, 40], [200], [30] * 6, [120, 90]], 256, seed=20 + step, mask_rate=0.3)
            for step in range(DDP_STEPS)]


def ddp_model() -> tuple[PLM, list]:
    """Perturbed weights (test_model.build): from init_weights some gradients are ~0, where Adam's first step is
    ±lr whatever their size, which would compare float noise."""
    raw = build(ModelConfig(**DDP_CONFIG), seed=0)
    return raw, optim.build_optimizers(raw.parameter_groups(), optim.OptimConfig(), all_params=raw.parameters())


def gloo_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        # Muon on a torch without the new collective name: optim falls back to all_gather_into_tensor. (Put back
        # afterwards: torch.compile's own tables name it.)
        new_name, old_name = getattr(dist, "all_gather_single", None), dist.all_gather_into_tensor
        calls = []
        if new_name is not None:
            delattr(dist, "all_gather_single")
        dist.all_gather_into_tensor = lambda *args, **kwargs: (calls.append(1), old_name(*args, **kwargs))[1]
        try:
            params = make_params()
            run_muon(make_muon(params), params, range(3))
        finally:
            dist.all_gather_into_tensor = old_name
            if new_name is not None:
                dist.all_gather_single = new_name
        torch.save({"params": [p.detach() for p in params], "gathers": len(calls)}, f"{out_dir}/muon_rank{rank}.pt")

        # Training through distributed.compile_and_wrap (torch.compile, then DDP), recording DDPOptimizer's buckets.
        import torch._dynamo.backends.distributed as ddp_backend
        buckets, print_buckets = [], ddp_backend.pretty_print_buckets
        ddp_backend.pretty_print_buckets = lambda b, cap: (buckets.append(len(b)), print_buckets(b, cap))
        raw, optimizers = ddp_model()
        model, _ = distributed.compile_and_wrap(raw, torch.device("cpu"), compile_model=True, distributed=True)
        losses = []
        for ids, seq, labels in ddp_batches():
            mine = slice(2 * rank, 2 * rank + 2)
            global_count = (labels != -100).sum().item()
            loss, _ = model(ids[mine], seq[mine], labels[mine])
            (loss * world / global_count).backward()  # DDP averages: the sum over ranks / global count
            for opt in optimizers:
                opt.step()
                opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
        # The GPU's composition, DDP around a fullgraph-compiled flex model: forward only (flex's backward does not
        # run on a CPU). DDPOptimizer must split a graph holding the FlexAttention higher-order op.
        flex = PLM(dataclasses.replace(ModelConfig(**DDP_CONFIG), attention_backend="flex"))
        flex.load_state_dict(raw.state_dict())
        flex_model, _ = distributed.compile_and_wrap(flex, torch.device("cpu"), compile_model=True, distributed=True)
        buckets_before = len(buckets)
        with torch.no_grad():
            flex_loss, _ = flex_model(*ddp_batches()[0])
        torch.save({"params": [p.detach() for p in raw.parameters()], "losses": losses,
                    "buckets": buckets[:buckets_before], "flex_buckets": buckets[buckets_before:],
                    "flex_loss": flex_loss.item(), "sdpa_loss": raw(*ddp_batches()[0])[0].item()},
                   f"{out_dir}/ddp_rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def gloo_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("gloo")
    port = free_port()
    run_processes(gloo_worker, [(r, 2, port, str(out)) for r in range(2)], timeout=600)
    return out


@pytest.mark.slow
def test_muon_without_all_gather_single_equals_one_process(gloo_results):
    """Would have caught: optim.py calling dist.all_gather_single, which older torch lacks (AttributeError at the
    first Muon step, after minutes of compiling). With it removed, 2 ranks equal one process."""
    params = make_params()
    run_muon(make_muon(params), params, range(3))
    for rank in range(2):
        result = torch.load(gloo_results / f"muon_rank{rank}.pt")
        assert result["gathers"] == 2 * 3  # the fallback ran: one gather per shape bucket and step
        for got, want in zip(result["params"], params):
            torch.testing.assert_close(got, want.detach(), rtol=0, atol=1e-6)


@pytest.mark.slow
def test_compiled_ddp_training_on_two_ranks_equals_one_process(gloo_results):
    """Would have caught a wrong compile/DDP composition: the model compiled by distributed.compile_and_wrap and wrapped
    in DDP, two steps of Muon + Adam on two gloo ranks, equals one eager process on the whole batch; and
    DDPOptimizer split the compiled graph at DDP's bucket boundaries (so a bucket's all-reduce can start while the
    rest of the backward runs), which is what happens on GPU too."""
    raw, optimizers = ddp_model()
    losses = []
    for ids, seq, labels in ddp_batches():
        loss, n = raw(ids, seq, labels)
        (loss / n).backward()
        for opt in optimizers:
            opt.step()
            opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    results = [torch.load(gloo_results / f"ddp_rank{rank}.pt") for rank in range(2)]
    for rank, result in enumerate(results):
        for got, (name, want) in zip(result["params"], raw.named_parameters()):
            torch.testing.assert_close(got, want.detach(), rtol=1e-4, atol=1e-5, msg=name)
        assert max(result["buckets"]) >= 2, result["buckets"]
        assert result["flex_buckets"] and max(result["flex_buckets"]) >= 2, result["flex_buckets"]
        assert result["flex_loss"] == pytest.approx(result["sdpa_loss"], rel=1e-5)
    for step, loss in enumerate(losses):
        assert results[0]["losses"][step] + results[1]["losses"][step] == pytest.approx(loss, rel=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# benchmarks/gpu_plan.py against the CPU, and benchmarks/gpu_check.py's CPU form

RSS_SCRIPT = r"""
import json, os, sys
sys.path.insert(0, {benchmarks!r}); sys.path.insert(0, {root!r})
import torch
torch.set_num_threads(1)
import gpu_plan, model as M
from test_model import packed_batch

def rss():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

config = M.ModelConfig(**{config!r})
out = {{}}
for gpu in (False, True):
    swaps = dict(attend=gpu_plan.flex_attention_shapes, **(dict(rms_norm=gpu_plan.fused_rms_norm_shapes) if gpu else {{}}))
    with gpu_plan.patched(M, **swaps):
        torch.manual_seed(0)
        model = M.PLM(config)
        model.init_weights()
        batch = packed_batch([[300, 500, 200, 24]] * {rows}, {width}, seed=1)
        precision = torch.autocast("cpu", dtype=torch.bfloat16) if gpu else torch.autocast("cpu", enabled=False)
        policy = gpu_plan.cuda_autocast_policy() if gpu else torch.autocast("cpu", enabled=False)
        for _ in range(2):  # warm-up: lazily allocated state is not an activation
            with precision, policy:
                loss, _ = model(*batch)
            loss.backward()
            del loss
        model.zero_grad(set_to_none=False)
        before = rss()
        with precision, policy:
            loss, _ = model(*batch)
        out[str(gpu)] = rss() - before
        loss.backward()
        del loss, model
print(json.dumps(out))
"""


@pytest.mark.slow
def test_gpu_plan_memory_and_flops_match_the_cpu():
    """gpu_plan's FakeTensor trace against a real CPU run of the same model and shape: the process's resident
    memory grows by what the forward leaves alive for backward (glibc made to return freed blocks at once), in
    both of the trace's forms (fp32; and bf16 autocast with the CUDA policy and stand-ins). FLOPs: torch's
    FlopCounterMode over a real forward + backward equals the trace's count and the formula's matmul part."""
    config = dict(hidden_size=128, num_attention_heads=2, num_hidden_layers=2, value_embeddings=1)
    rows, width = 2, 1024
    script = RSS_SCRIPT.format(benchmarks=str(ROOT / "benchmarks"), root=str(ROOT / "tests"), config=config,
                               rows=rows, width=width)
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300,
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    measured = json.loads(proc.stdout.strip().splitlines()[-1])
    for gpu in (False, True):
        traced = gpu_plan.trace_step(ModelConfig(**config), rows, width, gpu=gpu).saved_total
        assert measured[str(gpu)] == pytest.approx(traced, rel=0.02), (gpu, measured, traced)

    model_config = ModelConfig(**config)
    torch.manual_seed(0)
    model = PLM(model_config)
    model.init_weights()
    batch = packed_batch([[1024]] * rows, width, seed=2)
    real = gpu_plan.trace_step(model_config, rows, width, gpu=False, fake=False, model=model, batch=batch)
    fake = gpu_plan.trace_step(model_config, rows, width, gpu=False)
    assert real.matmul_flops == fake.matmul_flops
    D, V = model_config.hidden_size, model_config.vocab_size
    attention = 3 * model_config.num_hidden_layers * 4 * width * D
    assert real.matmul_flops / (rows * width) == model.flops_per_token(width) - attention - 3 * 2 * V * D


def test_gpu_plan_reports_the_default_run(capsys):
    """The planner runs on default.yaml without a GPU and prints every number the issue asks for."""
    assert gpu_plan.main(["--yaml_path", str(ROOT / "example_yamls" / "default.yaml"),
                          "--attended_length", "400"]) == 0
    out = capsys.readouterr().out
    for needle in ("parameters: 132,323,412", "FLOPs per token", "memory per GPU", "saved activations",
                   "communication per step per GPU", "MFU >"):
        assert needle in out, out


@pytest.mark.slow
def test_gpu_check_cpu_form_passes():
    """benchmarks/gpu_check.py without a GPU runs its reduced CPU form by itself and exits 0 with a verdict."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py")], capture_output=True,
                          text=True, env=env, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert [line.split()[1] for line in lines if line.startswith("[PASS]")] == \
        ["flex_vs_sdpa", "newton_schulz", "collectives", "loader", "step"]
    assert lines[-1].startswith("verdict: PASS")
