"""optim.py against independent references: the SVD polar factor, a hand-written Muon step, a 1-process run,
torch.optim.AdamW, and the schedule formulas evaluated by hand. CPU, fp32, fixed seeds."""

import io
import math

import numpy as np
import pytest
import torch
import torch.distributed as dist

from optim import (
    QUINTIC_COEFFICIENTS,
    Muon,
    OptimConfig,
    apply_schedule,
    build_optimizers,
    check_param_groups,
    clip_grad_norm,
    lr_multiplier,
    muon_momentum_at,
    newton_schulz,
)
from optim import schedule as optim_schedule

from conftest import free_port, run_processes

# ----------------------------------------------------------------------------------------------------------------------
# Newton–Schulz


def matrix_with_spectrum(rows: int, cols: int, singular_values: torch.Tensor, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    U, _ = torch.linalg.qr(torch.randn(rows, rows, generator=gen, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(cols, cols, generator=gen, dtype=torch.float64))
    k = min(rows, cols)
    return ((U[:, :k] * singular_values) @ V[:, :k].T).float()


def scalar_iteration(x: np.ndarray) -> np.ndarray:
    """The Newton–Schulz polynomial applied to scalars (σ/‖G‖_F), in float64: what each singular value becomes."""
    a, b, c = QUINTIC_COEFFICIENTS
    for _ in range(5):
        x = a * x + b * x**3 + c * x**5
    return x


# Band of the 5-step scalar iteration over x = σ/‖G‖_F ∈ [2e-3, 1], found by evaluating `scalar_iteration` on a
# fine log grid ([0.682, 1.202]). Tighter than Keller Jordan's folklore "~U(0.5, 1.5)"; below x ≈ 1e-3 five steps
# are not enough and values fall towards 0.
BAND = (0.68, 1.21)
SMALLEST_COVERED = 2e-3


def test_band_follows_from_the_coefficients():
    x = np.logspace(math.log10(SMALLEST_COVERED), 0, 100_001)
    y = scalar_iteration(x)
    lo, hi = BAND
    assert lo <= y.min() and y.max() <= hi
    assert y.min() - lo < 0.01 and hi - y.max() < 0.01, "the band is loose: tighten it"


@pytest.mark.parametrize(
    "rows, cols, spectrum",
    [
        (32, 96, "gaussian"),  # wide
        (96, 32, "gaussian"),  # tall: transposed inside
        (48, 48, "log"),  # square, singular values spread over three decades
        (40, 72, "log"),
    ],
)
def test_newton_schulz_against_svd_polar_factor(rows, cols, spectrum):
    if spectrum == "gaussian":
        G = torch.randn(rows, cols, generator=torch.Generator().manual_seed(rows * cols))
    else:
        G = matrix_with_spectrum(rows, cols, torch.logspace(-3, 0, min(rows, cols), dtype=torch.float64), seed=rows)
    O = newton_schulz(G, steps=5)
    assert O.shape == G.shape and O.dtype == torch.float32

    U, S, Vh = torch.linalg.svd(G.double(), full_matrices=False)
    D = U.T @ O.double() @ Vh.T  # diagonal iff O has G's singular vectors
    diag = D.diagonal()
    off_diag = D - torch.diag(diag)
    assert off_diag.abs().max() < 1e-5, "singular vectors not aligned with the SVD's"

    x = (S / torch.linalg.norm(G.double())).numpy()
    np.testing.assert_allclose(diag.numpy(), scalar_iteration(x), atol=1e-4)
    lo, hi = BAND
    covered = diag[torch.from_numpy(x >= SMALLEST_COVERED)]
    assert covered.numel() > 0
    assert lo <= covered.min() and covered.max() <= hi, (covered.min(), covered.max())


def test_newton_schulz_batched_equals_one_by_one_and_zero_stays_zero():
    gen = torch.Generator().manual_seed(0)
    batch = torch.randn(3, 16, 24, generator=gen)
    batch[1] = 0
    out = newton_schulz(batch)
    for i in range(3):
        torch.testing.assert_close(out[i], newton_schulz(batch[i]), rtol=0, atol=1e-6)
    assert torch.equal(out[1], torch.zeros(16, 24))


def test_newton_schulz_precision_and_argument_checks():
    assert newton_schulz(torch.randn(8, 12, dtype=torch.bfloat16)).dtype == torch.float32  # fp32 on CPU
    with pytest.raises(ValueError, match="ns_steps"):
        Muon([torch.nn.Parameter(torch.zeros(4, 4))], ns_steps=0)
    with pytest.raises(ValueError, match="matrix"):
        newton_schulz(torch.randn(8))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_newton_schulz_bf16_on_cuda():
    G = matrix_with_spectrum(256, 512, torch.logspace(-2, 0, 256, dtype=torch.float64), seed=3).cuda()
    muon = Muon([torch.nn.Parameter(torch.zeros(4, 4, device="cuda"))])
    O = muon._orthogonalise(G[None], 5)[0]  # the compiled path the optimiser uses
    assert O.dtype == torch.bfloat16
    U, S, Vh = torch.linalg.svd(G.double(), full_matrices=False)
    D = U.T @ O.double() @ Vh.T
    x = (S / torch.linalg.norm(G.double())).cpu().numpy()
    np.testing.assert_allclose(D.diagonal().cpu().numpy(), scalar_iteration(x), atol=0.05)
    assert (D - torch.diag(D.diagonal())).abs().max() < 0.05


# ----------------------------------------------------------------------------------------------------------------------
# Muon, one process


def reference_muon(params, grads_per_step, groups, momenta):
    """Muon written from its definition, one matrix at a time: for checking `Muon.step`."""
    params = [p.clone() for p in params]
    bufs = [torch.zeros_like(p) for p in params]
    for grads, m in zip(grads_per_step, momenta):
        for i, (p, g) in enumerate(zip(params, grads)):
            lr = groups[i]
            bufs[i] = m * bufs[i] + (1 - m) * g
            direction = (1 - m) * g + m * bufs[i]
            rows, cols = p.shape
            u = newton_schulz(direction) * math.sqrt(max(1.0, rows / cols))
            params[i] = p - lr * u
    return params, bufs


SHAPES = [(8, 16), (24, 8), (8, 16), (24, 8), (8, 16)]  # 5 matrices, two shapes, wide and tall
GROUP_OF = [0, 0, 1, 1, 0]
GROUP_LRS = [0.05, 0.02]
MOMENTA = [0.85, 0.9, 0.95, 0.95]


def make_params(seed: int = 0) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(shape, generator=gen) * 0.1) for shape in SHAPES]


def make_grads(step: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(1000 + step)
    return [torch.randn(shape, generator=gen) for shape in SHAPES]


def make_muon(params) -> Muon:
    groups = [dict(params=[], lr=lr) for lr in GROUP_LRS]
    for p, g in zip(params, GROUP_OF):
        groups[g]["params"].append(p)
    return Muon(groups)


def run_muon(muon: Muon, params, steps: range) -> None:
    for step in steps:
        for group in muon.param_groups:
            group["momentum"] = MOMENTA[step]
        for p, g in zip(params, make_grads(step)):
            p.grad = g
        muon.step()


def test_muon_step_matches_its_definition():
    params = make_params()
    expected, expected_bufs = reference_muon(
        [p.detach() for p in params],
        [make_grads(step) for step in range(3)],
        [GROUP_LRS[g] for g in GROUP_OF],
        MOMENTA[:3],
    )
    muon = make_muon(params)
    run_muon(muon, params, range(3))
    for p, e, b, p_ref in zip(params, expected, expected_bufs, make_params()):
        torch.testing.assert_close(p.detach(), e, rtol=0, atol=1e-6)
        torch.testing.assert_close(muon.state[p]["momentum_buffer"], b, rtol=0, atol=1e-6)
        assert not torch.equal(p.detach(), p_ref)  # the step did move every matrix


def test_muon_leaves_the_gradient_untouched():
    params = make_params()
    muon = make_muon(params)
    run_muon(muon, params, range(1))
    for p, g in zip(params, make_grads(0)):
        assert torch.equal(p.grad, g)


def test_muon_state_dict_round_trip_resumes_identically():
    params = make_params()
    muon = make_muon(params)
    run_muon(muon, params, range(2))
    saved = io.BytesIO()
    torch.save({"params": [p.detach().clone() for p in params], "muon": muon.state_dict()}, saved)
    run_muon(muon, params, range(2, 4))

    saved.seek(0)
    checkpoint = torch.load(saved)
    resumed = [torch.nn.Parameter(t) for t in checkpoint["params"]]
    fresh = make_muon(resumed)
    fresh.load_state_dict(checkpoint["muon"])
    run_muon(fresh, resumed, range(2, 4))
    for a, b in zip(params, resumed):
        assert torch.equal(a, b)


def test_muon_rejects_non_matrices():
    with pytest.raises(ValueError, match=r"2-D matrices only.*\(8,\)"):
        Muon([torch.nn.Parameter(torch.zeros(8))])


# ----------------------------------------------------------------------------------------------------------------------
# Muon on several gloo ranks equals one process


WORLD_SIZES = (3, 2)  # 3 divides neither bucket size (3 and 2 matrices); 2 divides one of them


def distributed_worker(rank: int, ports: list[int], out_dir: str) -> None:
    """One process for every world size in turn, so the (slow) process start-up is paid once."""
    torch.set_num_threads(1)
    for world, port in zip(WORLD_SIZES, ports):
        if rank >= world:
            continue
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
        try:
            params = make_params()
            muon = make_muon(params)
            batch_sizes = []
            orthogonalise = muon._orthogonalise

            def counting(X, steps):
                batch_sizes.append(X.shape[0])
                return orthogonalise(X, steps)

            muon._orthogonalise = counting
            run_muon(muon, params, range(3))
            torch.save(
                {"params": [p.detach() for p in params], "state": muon.state_dict(), "batch_sizes": batch_sizes},
                f"{out_dir}/world{world}_rank{rank}.pt",
            )
            # Leave the group together: a rank that exits while the others still use the group's store can die
            # in gloo's teardown ("terminate called without an active exception", seen once in the full suite).
            dist.barrier()
        finally:
            dist.destroy_process_group()


def test_distributed_muon_equals_single_process(tmp_path):
    ports = [free_port() for _ in WORLD_SIZES]
    run_processes(distributed_worker, [(r, ports, str(tmp_path)) for r in range(max(WORLD_SIZES))], timeout=120)

    params = make_params()
    muon = make_muon(params)
    run_muon(muon, params, range(3))
    single_state = muon.state_dict()
    for world in WORLD_SIZES:
        for rank in range(world):
            result = torch.load(tmp_path / f"world{world}_rank{rank}.pt")
            for got, want in zip(result["params"], params):
                torch.testing.assert_close(got, want.detach(), rtol=0, atol=1e-6)
            for index, state in single_state["state"].items():
                torch.testing.assert_close(
                    result["state"]["state"][index]["momentum_buffer"], state["momentum_buffer"], rtol=0, atol=0
                )
            # Each rank orthogonalised only its share: ⌈3/W⌉ + ⌈2/W⌉ matrices per step, not all 5.
            assert result["batch_sizes"] == [math.ceil(3 / world), math.ceil(2 / world)] * 3, (world, rank)


# ----------------------------------------------------------------------------------------------------------------------
# Parameter groups, the Adam part and the ESM2 recipe


def make_param_groups(seed: int = 0) -> dict[str, list[torch.nn.Parameter]]:
    gen = torch.Generator().manual_seed(seed)
    shapes = {
        "hidden": [(16, 8), (8, 16)],
        "embed": [(33, 8)],
        "value_embed": [(33, 8), (33, 8)],
        "head": [(33, 8)],
        "scalar": [(8,), (), (4,)],
    }
    return {name: [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in group] for name, group in shapes.items()}


def set_grads(param_groups, step: int) -> None:
    gen = torch.Generator().manual_seed(2000 + step)
    for params in param_groups.values():
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen)


def clone_groups(param_groups):
    return {name: [torch.nn.Parameter(p.detach().clone()) for p in params] for name, params in param_groups.items()}


def step_alongside(optimizer, hand_built, groups, reference, names, steps: int = 4) -> None:
    """Step `optimizer` (on `groups`) and a hand-built torch optimiser (on `reference`, a clone) with the same
    gradients, then check that the parameters of the groups in `names` agree to 1e-7."""
    for step in range(steps):
        set_grads(groups, step)
        set_grads(reference, step)
        optimizer.step()
        hand_built.step()
    for name in names:
        for got, want in zip(groups[name], reference[name]):
            torch.testing.assert_close(got, want, rtol=0, atol=1e-7)


LRS = dict(lr_hidden=0.03, lr_embed=0.07, lr_head=0.009, lr_scalar=0.05)


def test_speedrun_split_and_adam_part_equal_torch_adamw():
    groups = make_param_groups()
    reference = clone_groups(groups)
    initial = clone_groups(groups)
    muon, adam = build_optimizers(groups, OptimConfig(**LRS, adam_betas=(0.8, 0.95), adam_eps=1e-10))
    assert isinstance(muon, Muon) and type(adam) is torch.optim.AdamW
    assert [p for g in muon.param_groups for p in g["params"]] == groups["hidden"]
    assert [g["name"] for g in adam.param_groups] == ["embed", "value_embed", "head", "scalar"]
    assert adam.param_groups[1]["lr"] == LRS["lr_embed"]  # value embeddings use the embedding LR
    for optimizer in (muon, adam):
        for group in optimizer.param_groups:
            assert group["initial_lr"] == group["lr"]

    hand_built = torch.optim.AdamW(
        [
            dict(params=reference["embed"], lr=LRS["lr_embed"]),
            dict(params=reference["value_embed"], lr=LRS["lr_embed"]),
            dict(params=reference["head"], lr=LRS["lr_head"]),
            dict(params=reference["scalar"], lr=LRS["lr_scalar"]),
        ],
        betas=(0.8, 0.95),
        eps=1e-10,
        weight_decay=0.0,
    )
    step_alongside(adam, hand_built, groups, reference, ("embed", "value_embed", "head", "scalar"))
    for name in ("embed", "value_embed", "head", "scalar"):
        for got, start in zip(groups[name], initial[name]):
            assert not torch.equal(got, start)


def test_hidden_adamw_switches_only_the_hidden_optimiser():
    """The isolated Muon ablation: the hidden matrices move into the same Adam (own LR, no weight decay), the other
    groups and the schedule are unchanged, and the result equals one hand-built torch AdamW."""
    groups = make_param_groups()
    reference = clone_groups(groups)
    config = OptimConfig(**LRS, hidden_optimizer="adamw", lr_hidden_adamw=0.004)
    (adam,) = build_optimizers(groups, config, all_params=[p for ps in groups.values() for p in ps])
    assert type(adam) is torch.optim.AdamW
    assert [g["name"] for g in adam.param_groups] == ["hidden", "embed", "value_embed", "head", "scalar"]
    assert config.peak_lr == 0.004 and not config.uses_muon
    lrs = dict(hidden=0.004, embed=LRS["lr_embed"], value_embed=LRS["lr_embed"], head=LRS["lr_head"],
               scalar=LRS["lr_scalar"])
    hand_built = torch.optim.AdamW([dict(params=reference[name], lr=lr) for name, lr in lrs.items()],
                                   betas=(0.8, 0.95), eps=1e-10, weight_decay=0.0)
    step_alongside(adam, hand_built, groups, reference, lrs)
    # the schedule: same LR multiplier as the Muon recipe, and no Muon momentum to set
    muon_config = OptimConfig(**LRS)
    assert optim_schedule(config, 7, 0.8) == (optim_schedule(muon_config, 7, 0.8)[0], None)
    with pytest.raises(ValueError, match="^hidden_optimizer:"):
        OptimConfig(hidden_optimizer="sgd")
    with pytest.raises(ValueError, match="^hidden_optimizer: only the speedrun recipe"):
        OptimConfig(recipe="esm2", hidden_optimizer="adamw")


def test_settings_reach_the_groups_and_bad_values_are_named():
    muon, adam = build_optimizers(make_param_groups(), OptimConfig(muon_momentum_end=0.9, ns_steps=4, lr_embed=0.5))
    assert adam.param_groups[1]["name"] == "value_embed" and adam.param_groups[1]["lr"] == 0.5
    (g,) = muon.param_groups
    assert (g["momentum"], g["ns_steps"]) == (0.9, 4)
    for bad, key in ((dict(recipe="esm3"), "recipe"), (dict(scheduler_type="cosinus"), "scheduler_type"),
                     (dict(cooldown_frac=0.0), "cooldown_frac"), (dict(lr_floor=1.5), "lr_floor"),
                     (dict(adam_betas=(0.9, 1.0)), "adam_betas"), (dict(ns_steps=0), "ns_steps"),
                     (dict(lr_hidden=-1.0), "lr_hidden")):
        with pytest.raises(ValueError, match=f"^{key}:"):
            OptimConfig(**bad)


def test_esm2_recipe_equals_hand_built_adamw():
    groups = make_param_groups()
    reference = clone_groups(groups)
    (adamw,) = build_optimizers(groups, OptimConfig(recipe="esm2"))
    all_reference = [p for name in ("hidden", "embed", "value_embed", "head", "scalar") for p in reference[name]]
    hand_built = torch.optim.AdamW(all_reference, lr=4e-4, betas=(0.9, 0.98), eps=1e-8, weight_decay=0.01)
    assert adamw.param_groups[0]["initial_lr"] == 4e-4
    step_alongside(adamw, hand_built, groups, reference, groups)


def test_every_parameter_in_exactly_one_group():
    groups = make_param_groups()
    model_params = [p for params in groups.values() for p in params]
    check_param_groups(groups, model_params)

    shared = dict(groups, head=groups["head"] + [groups["embed"][0]])
    with pytest.raises(ValueError, match=r"\(33, 8\).*in both 'embed' and 'head'"):
        build_optimizers(shared, OptimConfig())
    repeated = dict(groups, scalar=groups["scalar"] + [groups["scalar"][0]])
    with pytest.raises(ValueError, match=r"\(8,\).*twice in 'scalar'"):
        build_optimizers(repeated, OptimConfig())
    forgotten = torch.nn.Parameter(torch.zeros(5, 7))
    with pytest.raises(ValueError, match=r"\(5, 7\) is in no parameter group"):
        build_optimizers(groups, OptimConfig(), all_params=model_params + [forgotten])
    with pytest.raises(ValueError, match=r"\(16, 8\).*'hidden'.*not a parameter of the model"):
        build_optimizers(groups, OptimConfig(), all_params=model_params[1:])
    with pytest.raises(ValueError, match="unknown parameter group"):
        build_optimizers(dict(groups, scalars=[]), OptimConfig())
    with pytest.raises(ValueError, match=r"'hidden'.*\(8,\)"):
        build_optimizers(dict(groups, hidden=groups["hidden"] + [torch.nn.Parameter(torch.zeros(8))]), OptimConfig())


# ----------------------------------------------------------------------------------------------------------------------
# Schedules


SCHEDULE = dict(warmup_steps=100, cooldown_frac=0.4, floor=0.1)


@pytest.mark.parametrize("schedule", ["constant", "cosine", "linear", "trapezoid"])
def test_schedule_start_warmup_and_end(schedule):
    floor = 1.0 if schedule == "constant" else SCHEDULE["floor"]
    num_steps = 1000

    def at(step, progress=None):
        progress = step / num_steps if progress is None else progress
        return lr_multiplier(step, progress, schedule=schedule, **SCHEDULE)

    assert at(0) == pytest.approx(1 / 100)  # warm-up starts near 0, not at 0
    assert at(49) == pytest.approx(0.5 * at(99, 49 / num_steps))
    assert at(99, 0.0) == 1.0  # end of warm-up, before any decay
    assert at(num_steps, 1.0) == floor  # exact, for a step budget...
    assert at(12_345, 3600.0 / 3600.0) == floor  # ...and for a wall-clock budget: used == total seconds
    values = [at(s) for s in range(100, num_steps + 1)]
    assert all(b <= a for a, b in zip(values, values[1:]))  # non-increasing after warm-up


def test_schedule_mid_cooldown_values():
    def shape(schedule, progress):
        return lr_multiplier(10_000, progress, schedule=schedule, **SCHEDULE)

    assert shape("cosine", 0.5) == pytest.approx(0.1 + 0.9 * 0.5)
    assert shape("cosine", 0.25) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert shape("linear", 0.25) == pytest.approx(0.1 + 0.9 * 0.75)
    assert shape("trapezoid", 0.6) == 1.0  # stable until 1 - cooldown_frac
    assert shape("trapezoid", 0.8) == pytest.approx((1 + 0.1) / 2)  # halfway through the cooldown
    assert shape("trapezoid", 0.9) == pytest.approx(0.1 + 0.9 * 0.25)
    assert shape("constant", 0.7) == 1.0
    assert shape("linear", 1.3) == 0.1  # a wall-clock run's progress just past 1 stays at the floor


def test_time_based_progress_reaches_the_floor_whatever_the_hardware_speed():
    budget = 60.0  # seconds
    for seconds_per_step in (0.25, 0.1):  # a slow and a fast machine: 240 and 600 steps
        elapsed, step, at_80_percent = 0.0, 0, []
        while elapsed < budget:
            elapsed, step = min(budget, elapsed + seconds_per_step), step + 1
            mult = lr_multiplier(step, elapsed / budget, schedule="trapezoid", **SCHEDULE)
            if elapsed / budget == pytest.approx(0.8):
                at_80_percent.append(mult)
        assert step == round(budget / seconds_per_step)
        assert at_80_percent == [pytest.approx(0.55)]  # the same point of the cooldown on both machines
        assert mult == 0.1  # the floor, exactly, when the budget is used up


def test_schedule_argument_checks():
    with pytest.raises(ValueError, match="schedule must be one of"):
        lr_multiplier(0, 0.0, schedule="step", **SCHEDULE)
    with pytest.raises(ValueError, match="progress"):
        lr_multiplier(0, -0.1, schedule="linear", **SCHEDULE)
    with pytest.raises(ValueError, match="cooldown_frac"):
        lr_multiplier(0, 0.5, schedule="trapezoid", warmup_steps=0, cooldown_frac=0.0, floor=0.1)


def test_muon_momentum_warmup():
    assert muon_momentum_at(0) == 0.85
    assert muon_momentum_at(150) == pytest.approx(0.90)
    assert muon_momentum_at(300) == 0.95
    assert muon_momentum_at(10_000) == 0.95
    assert muon_momentum_at(5, warmup_steps=10, start=0.5, end=0.7) == pytest.approx(0.6)


def test_apply_schedule_reaches_the_step():
    groups = make_param_groups()
    optimizers = build_optimizers(groups, OptimConfig(**LRS))
    apply_schedule(optimizers, 0.5, 0.9)
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            assert group["lr"] == 0.5 * group["initial_lr"]
    assert optimizers[0].param_groups[0]["momentum"] == 0.9
    assert optimizers[1].param_groups[0]["betas"] == (0.8, 0.95)

    before = clone_groups(groups)
    apply_schedule(optimizers, 0.0, None)  # LR 0: the step must not move anything
    set_grads(groups, 0)
    for optimizer in optimizers:
        optimizer.step()
    for name in groups:
        for got, want in zip(groups[name], before[name]):
            assert torch.equal(got, want)

    (adamw,) = build_optimizers(make_param_groups(), OptimConfig(recipe="esm2"))
    with pytest.raises(ValueError, match="none of the optimisers is Muon"):
        apply_schedule([adamw], 1.0, 0.95)


# ----------------------------------------------------------------------------------------------------------------------
# Gradient clipping


def test_clip_grad_norm_is_the_global_norm():
    groups = make_param_groups()
    set_grads(groups, 0)
    params = [p for ps in groups.values() for p in ps]
    grads = [p.grad.clone() for p in params]
    expected = math.sqrt(sum(float((g.double() ** 2).sum()) for g in grads))

    assert clip_grad_norm(params, None).item() == pytest.approx(expected, rel=1e-6)
    assert all(torch.equal(p.grad, g) for p, g in zip(params, grads))  # None: measure only

    assert clip_grad_norm(params, 1.0).item() == pytest.approx(expected, rel=1e-6)  # norm before clipping
    for p, g in zip(params, grads):
        torch.testing.assert_close(p.grad, g * (1.0 / expected), rtol=1e-5, atol=1e-7)
    clipped = math.sqrt(sum(float((p.grad.double() ** 2).sum()) for p in params))
    assert clipped == pytest.approx(1.0, rel=1e-5)


def test_schedule_reads_the_config():
    config = OptimConfig(lr_warmup_steps=4, scheduler_type="linear", lr_floor=0.2, muon_momentum_warmup_steps=10,
                         muon_momentum_start=0.5, muon_momentum_end=0.7)
    assert optim_schedule(config, 1, 0.5) == pytest.approx((0.5 * (0.2 + 0.8 * 0.5), 0.52))
    assert optim_schedule(OptimConfig(recipe="esm2", scheduler_type="constant"), 3, 0.9) == (1.0, None)
