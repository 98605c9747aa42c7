"""Optimisers for plm-speedrun: Muon for hidden matrices, Adam for the rest, the ESM2 AdamW recipe, schedules.

Reading order:
1. `newton_schulz`   — approximate orthogonalisation G ≈ U S Vᵀ ↦ U Vᵀ (quintic or Polar Express coefficients).
2. `Muon`            — Nesterov momentum → Newton–Schulz → shape-scaled update; the orthogonalisation work is
                       split over data-parallel ranks and shared with an all-gather, for any world size.
3. `build_optimizers` — the Muon/Adam split by parameter group ("speedrun") or one AdamW ("esm2").
4. Schedules as pure functions of (step, progress): `lr_multiplier`, `muon_momentum_at`; `apply_schedule` writes
   them into the param groups as plain Python floats, so nothing compiled ever sees them.
5. `clip_grad_norm`.

This module never sees `Config` or the model: `train.py` passes parameters and plain values by name.
See docs/OPTIM.md for the defaults and the reasoning behind them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn

# ----------------------------------------------------------------------------------------------------------------------
# Newton–Schulz orthogonalisation

# Keller Jordan's quintic iteration (Muon, modded-nanogpt record #3): coefficients chosen to maximise the slope at
# zero, so small singular values grow fast; the price is that the output singular values only land in a band
# around 1 instead of converging to 1 (see tests/test_optim.py for the measured band).
QUINTIC_COEFFICIENTS = (3.4445, -4.7750, 2.0315)

# Polar Express (arXiv 2505.16932; modded-nanogpt record #38): one optimal (a, b, c) per iteration, computed for
# 5 iterations with safety factor 2e-2 and cushion 2. The triples come from the paper's code as used by
# modded-nanogpt and nanochat.
POLAR_EXPRESS_COEFFICIENTS = (
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)
NS_COEFFICIENTS = ("quintic", "polar_express")


def orthogonalisation_dtype(device: torch.device) -> torch.dtype:
    """The one place that picks Newton–Schulz precision: bf16 on CUDA (as in modded-nanogpt; the iteration is
    robust to bf16 rounding and its matmuls run at tensor-core speed), fp32 elsewhere (CPU bf16 matmuls are slow
    and CPU runs are for tests, which want tight comparisons)."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def _coefficient_schedule(coefficients: str, steps: int) -> Sequence[tuple[float, float, float]]:
    if coefficients == "quintic":
        return (QUINTIC_COEFFICIENTS,) * steps
    if coefficients == "polar_express":
        if not 1 <= steps <= len(POLAR_EXPRESS_COEFFICIENTS):
            raise ValueError(
                f"polar_express has coefficients for 1..{len(POLAR_EXPRESS_COEFFICIENTS)} steps, got steps={steps}"
            )
        # Polar Express picks each step greedily, so the first k triples are the paper's k-step method.
        return POLAR_EXPRESS_COEFFICIENTS[:steps]
    raise ValueError(f"ns_coefficients must be one of {NS_COEFFICIENTS}, got {coefficients!r}")


def newton_schulz(
    G: Tensor, steps: int = 5, coefficients: str = "quintic", dtype: torch.dtype | None = None
) -> Tensor:
    """Approximate polar factor U Vᵀ of G = U S Vᵀ, batched over leading dimensions.

    G: (..., rows, cols), any float dtype. Returns the same shape in `dtype`, by default
    `orthogonalisation_dtype(G.device)` (bf16 on CUDA, fp32 on CPU; benchmarks/gpu_check.py runs the bf16
    iteration on a CPU too); the caller casts. The result is U p(S) Vᵀ for an odd polynomial p, so its singular vectors
    are exactly G's and only the singular values are approximate. For σ ≥ 2e-3·‖G‖_F, 5 steps put them in
    [0.68, 1.21] (quintic) or [0.85, 1.15] (Polar Express); smaller ones stay below the band (tests/test_optim.py
    derives both bands from the coefficients). A zero matrix maps to zero, which lets `Muon` pad with zeros.
    """
    if G.ndim < 2:
        raise ValueError(f"newton_schulz needs a matrix (or a batch of them), got shape {tuple(G.shape)}")
    schedule = _coefficient_schedule(coefficients, steps)
    X = G.to(dtype or orthogonalisation_dtype(G.device))
    tall = G.size(-2) > G.size(-1)
    if tall:  # iterate on the wide orientation: X Xᵀ is then the smaller Gram matrix
        X = X.mT
    # Divide by the Frobenius norm (≥ spectral norm) so every singular value starts in [0, 1], where the polynomials
    # are designed to work. Polar Express adds a 2% margin for bf16 rounding (record #38).
    norm = X.norm(dim=(-2, -1), keepdim=True)
    X = X / (norm * 1.02 + 1e-6) if coefficients == "polar_express" else X / (norm + 1e-7)
    for a, b, c in schedule:
        A = X @ X.mT
        B = b * A + c * (A @ A)
        X = a * X + B @ X
    return X.mT if tall else X


# ----------------------------------------------------------------------------------------------------------------------
# Muon


def _rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_gather_async(output: Tensor, input: Tensor):
    """Start gathering every rank's `input` into `output` (rank r's block at r·input.numel()); returns the work
    handle. Recent torch (2.13) names this collective `all_gather_single` and deprecates the older name
    `all_gather_into_tensor` (torch >= 2.0), which is the only one older images have: the same collective under
    either name, so an older image works instead of failing at the first Muon step after minutes of compiling."""
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    return gather(output, input, async_op=True)


class Muon(torch.optim.Optimizer):
    """MomentUm Orthogonalized by Newton–Schulz (Keller Jordan 2024, kellerjordan.github.io/posts/muon;
    modded-nanogpt records #3, #6 distributed, #9 momentum warm-up, #20 batched).

    For each 2-D parameter W (rows, cols) with gradient g, per step:

        buf ← m·buf + (1−m)·g                 (fp32 momentum, kept for every matrix on every rank)
        d   ← (1−m)·g + m·buf                 (Nesterov)
        u   ← newton_schulz(d) · √max(1, rows/cols)
        W   ← W − lr·wd·W        [only where u·W ≥ 0 if cautious]     (decoupled, follows the LR schedule)
        W   ← W − lr·u

    `lr` is the step in units of the orthogonalised update: with the shape factor, the change of W has an RMS of
    about lr/√cols per entry whatever the aspect ratio (Muon repo; Keller Jordan's Muon PR #16). Weight decay is
    multiplied by lr so it follows the LR schedule (as in arXiv 2502.16982 and modded-nanogpt).
    Cautious weight decay follows arXiv 2510.12402 (modded-nanogpt #43): decay only the entries where the
    update u and the weight W agree in sign, i.e. where the update already moves the weight towards zero.

    Distributed (torch.distributed initialised, world size W > 1): matrices are bucketed by shape, in the order they
    appear in the param groups; inside a bucket, matrix i is orthogonalised by rank i % W. Each rank stacks its
    share (padded with zero matrices to ⌈n/W⌉, so any W works), runs one batched Newton–Schulz, and an async
    all-gather (overlapping the next bucket's compute) gives every rank every update. All ranks therefore apply the
    same updates and hold the same state: rank 0's `state_dict()` resumes any world size. Gradients must already be
    averaged across ranks (DDP does that) and the set of parameters with a gradient must match across ranks.
    """

    def __init__(
        self,
        params: Iterable[nn.Parameter] | Iterable[dict],
        lr: float = 0.05,
        momentum: float = 0.95,
        weight_decay: float = 0.0,
        cautious_weight_decay: bool = False,
        ns_steps: int = 5,
        ns_coefficients: str = "quintic",
    ):
        _coefficient_schedule(ns_coefficients, ns_steps)  # validate early, not at the first step
        defaults = dict(
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            cautious_weight_decay=cautious_weight_decay,
            ns_steps=ns_steps,
            ns_coefficients=ns_coefficients,
        )
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                if p.ndim != 2:
                    raise ValueError(f"Muon takes 2-D matrices only, got a parameter of shape {tuple(p.shape)}")
        # Compiled lazily and only for CUDA tensors: compiling on CPU would only slow the tests down.
        self._compiled_newton_schulz: Callable[..., Tensor] | None = None

    def _orthogonalise(self, X: Tensor, steps: int, coefficients: str) -> Tensor:
        if X.device.type != "cuda":
            return newton_schulz(X, steps, coefficients)
        if self._compiled_newton_schulz is None:
            self._compiled_newton_schulz = torch.compile(newton_schulz, dynamic=False, fullgraph=True)
        return self._compiled_newton_schulz(X, steps, coefficients)

    def _nesterov_direction(self, p: nn.Parameter, group: dict) -> Tensor:
        """(1−m)·g + m·buf, in fp32, with the buffer already updated this step; g is not modified."""
        return p.grad.float().lerp(self.state[p]["momentum_buffer"], group["momentum"])

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        rank, world = _rank_and_world()

        # 1. Momentum for every matrix on every rank (cheap, and keeps the state identical everywhere), one foreach
        #    launch per group rather than one per matrix (~150 matrices in the default model); bucket the matrices by
        #    (shape, dtype, Newton–Schulz settings), in param-group order.
        buckets: dict[tuple, list[tuple[nn.Parameter, dict]]] = {}
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            for p in params:
                if "momentum_buffer" not in self.state[p]:
                    self.state[p]["momentum_buffer"] = torch.zeros_like(p, dtype=torch.float32)
                key = (tuple(p.shape), p.dtype, group["ns_steps"], group["ns_coefficients"])
                buckets.setdefault(key, []).append((p, group))
            if params:
                torch._foreach_lerp_([self.state[p]["momentum_buffer"] for p in params],
                                     [p.grad.float() for p in params], 1 - group["momentum"])

        # 2. Orthogonalise this rank's share of each bucket (matrix i on rank i % world, zero matrices as padding);
        #    start sharing it while the next bucket computes.
        pending = []
        for (shape, _, steps, coefficients), items in buckets.items():
            per_rank = math.ceil(len(items) / world)
            padding = items[0][0].new_zeros(shape, dtype=torch.float32)
            mine = [
                self._nesterov_direction(*items[i]) if i < len(items) else padding
                for i in range(rank, per_rank * world, world)
            ]
            updates = self._orthogonalise(torch.stack(mine), steps, coefficients)  # (per_rank, rows, cols)
            if world == 1:
                pending.append((items, updates.unsqueeze(0), None))
                continue
            gathered = updates.new_empty((world * per_rank, *shape))  # rank r's stack, then rank r+1's
            handle = all_gather_async(gathered, updates.contiguous())
            pending.append((items, gathered.view(world, per_rank, *shape), handle))  # [r, j] is matrix j·world + r

        # 3. Apply every update on every rank: per bucket one cast and one shape scaling (all its matrices share a
        #    shape), then foreach weight decay and update per param group.
        for items, gathered, handle in pending:
            if handle is not None:
                handle.wait()
            rows, cols = items[0][0].shape
            gathered = gathered.to(items[0][0].dtype).mul_(max(1.0, rows / cols) ** 0.5)
            by_group: dict[int, tuple[dict, list[Tensor], list[Tensor]]] = {}
            for i, (p, group) in enumerate(items):
                entry = by_group.setdefault(id(group), (group, [], []))
                entry[1].append(p)
                entry[2].append(gathered[i % world, i // world])
            for group, params, updates in by_group.values():
                lr, wd = group["lr"], group["weight_decay"]
                if wd != 0:
                    if group["cautious_weight_decay"]:
                        for p, u in zip(params, updates):
                            p.sub_(p * (u * p >= 0), alpha=lr * wd)
                    else:
                        torch._foreach_mul_(params, 1 - lr * wd)
                torch._foreach_sub_(params, updates, alpha=lr)
        return loss


# ----------------------------------------------------------------------------------------------------------------------
# The Muon/Adam split and the ESM2 AdamW recipe

PARAM_GROUP_NAMES = ("hidden", "embed", "value_embed", "head", "scalar")
RECIPES = ("speedrun", "esm2")


def _describe(p: Tensor) -> str:
    return f"parameter of shape {tuple(p.shape)}"


def check_param_groups(
    param_groups: dict[str, list[nn.Parameter]], all_params: Iterable[nn.Parameter] | None = None
) -> None:
    """Raise ValueError unless every parameter is in exactly one group, no group repeats a parameter, the group
    names are known and `hidden` holds only 2-D matrices. With `all_params` (e.g. `model.parameters()`), also
    raise if a parameter of the model is in no group or a group holds a parameter the model does not have."""
    unknown = set(param_groups) - set(PARAM_GROUP_NAMES)
    if unknown:
        raise ValueError(f"unknown parameter group(s) {sorted(unknown)}; expected names from {PARAM_GROUP_NAMES}")
    owner: dict[int, str] = {}
    for name, params in param_groups.items():
        for index, p in enumerate(params):
            if id(p) in owner:
                where = f"twice in {name!r}" if owner[id(p)] == name else f"in both {owner[id(p)]!r} and {name!r}"
                raise ValueError(f"{_describe(p)} (index {index} of {name!r}) is {where}")
            owner[id(p)] = name
            if name == "hidden" and p.ndim != 2:
                raise ValueError(f"group 'hidden' (Muon) takes 2-D matrices; index {index} is a {_describe(p)}")
    if all_params is not None:
        model_ids = set()
        for p in all_params:
            model_ids.add(id(p))
            if id(p) not in owner:
                raise ValueError(f"{_describe(p)} is in no parameter group")
        for name, params in param_groups.items():
            for index, p in enumerate(params):
                if id(p) not in model_ids:
                    raise ValueError(f"{_describe(p)} (index {index} of {name!r}) is not a parameter of the model")


def build_optimizers(
    param_groups: dict[str, list[nn.Parameter]],
    *,
    recipe: str = "speedrun",
    all_params: Iterable[nn.Parameter] | None = None,
    # speedrun recipe: Muon on `hidden`, Adam (no weight decay) on the rest
    lr_hidden: float = 0.05,
    lr_embed: float = 0.06,
    lr_value_embed: float | None = None,
    lr_head: float = 0.008,
    lr_scalar: float = 0.04,
    adam_betas: tuple[float, float] = (0.8, 0.95),
    adam_eps: float = 1e-10,
    muon_momentum: float = 0.95,
    ns_steps: int = 5,
    ns_coefficients: str = "quintic",
    muon_weight_decay: float = 0.0,
    cautious_weight_decay: bool = False,
    # esm2 recipe: one AdamW over everything
    lr: float = 4e-4,
    esm2_betas: tuple[float, float] = (0.9, 0.98),
    esm2_eps: float = 1e-8,
    esm2_weight_decay: float = 0.01,
    # both
    fused: bool | None = None,
) -> list[torch.optim.Optimizer]:
    """Build the optimisers for one model. Call `.step()` / `.zero_grad()` on each; pass the list to
    `apply_schedule`. Every param group gets `name` (for logs) and `initial_lr` (its peak LR; schedules multiply it).

    recipe="speedrun" → [Muon(hidden), AdamW(embed, value_embed, head, scalar; weight_decay=0)], empty groups
      skipped. LRs are peak values, in units of the update (Muon: spectral-norm scale; Adam: per-entry step).
      lr_value_embed=None means lr_embed. Reads only the speedrun knobs and `fused`.
    recipe="esm2" → [AdamW(all parameters)] with ESM2's published settings (Lin et al. 2023, Science): peak `lr`,
      `esm2_betas`, `esm2_eps`, decoupled `esm2_weight_decay` on every parameter, biases and norm weights
      included, as fairseq (which trained ESM2) does. Reads only `lr`, the esm2_* knobs and `fused`.

    `all_params` (e.g. `model.parameters()`), when given, also checks that every model parameter is in a group.
    `fused` is passed to torch.optim.AdamW (None: torch's default implementation).
    """
    check_param_groups(param_groups, all_params)
    if recipe == "speedrun":
        optimizers = _speedrun_optimizers(
            param_groups,
            lr_hidden=lr_hidden,
            lr_embed=lr_embed,
            lr_value_embed=lr_embed if lr_value_embed is None else lr_value_embed,
            lr_head=lr_head,
            lr_scalar=lr_scalar,
            adam_betas=adam_betas,
            adam_eps=adam_eps,
            muon_momentum=muon_momentum,
            ns_steps=ns_steps,
            ns_coefficients=ns_coefficients,
            muon_weight_decay=muon_weight_decay,
            cautious_weight_decay=cautious_weight_decay,
            fused=fused,
        )
    elif recipe == "esm2":
        optimizers = [_esm2_adamw(param_groups, lr, esm2_betas, esm2_eps, esm2_weight_decay, fused)]
    else:
        raise ValueError(f"recipe must be one of {RECIPES}, got {recipe!r}")
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            group["initial_lr"] = group["lr"]
    return optimizers


def _speedrun_optimizers(
    param_groups: dict[str, list[nn.Parameter]],
    *,
    lr_hidden: float,
    lr_embed: float,
    lr_value_embed: float,
    lr_head: float,
    lr_scalar: float,
    adam_betas: tuple[float, float],
    adam_eps: float,
    muon_momentum: float,
    ns_steps: int,
    ns_coefficients: str,
    muon_weight_decay: float,
    cautious_weight_decay: bool,
    fused: bool | None,
) -> list[torch.optim.Optimizer]:
    """Muon for the hidden matrices; Adam for embeddings, value embeddings, head and scalars, which Muon is not
    for (Muon README; speedrunningplms train.py:375-396). Adam has no weight decay here, as in both prior arts."""
    if cautious_weight_decay and muon_weight_decay == 0:
        raise ValueError("cautious_weight_decay=True has no effect with muon_weight_decay=0")
    optimizers: list[torch.optim.Optimizer] = []
    hidden = list(param_groups.get("hidden", []))
    if hidden:
        optimizers.append(
            Muon(
                [dict(params=hidden, name="hidden")],
                lr=lr_hidden,
                momentum=muon_momentum,
                weight_decay=muon_weight_decay,
                cautious_weight_decay=cautious_weight_decay,
                ns_steps=ns_steps,
                ns_coefficients=ns_coefficients,
            )
        )
    adam_lrs = {"embed": lr_embed, "value_embed": lr_value_embed, "head": lr_head, "scalar": lr_scalar}
    adam_groups = [
        dict(params=list(param_groups[name]), lr=group_lr, name=name)
        for name, group_lr in adam_lrs.items()
        if param_groups.get(name)
    ]
    if adam_groups:
        optimizers.append(
            torch.optim.AdamW(adam_groups, betas=adam_betas, eps=adam_eps, weight_decay=0.0, fused=fused)
        )
    return optimizers


def _esm2_adamw(
    param_groups: dict[str, list[nn.Parameter]],
    lr: float,
    betas: tuple[float, float],
    eps: float,
    weight_decay: float,
    fused: bool | None,
) -> torch.optim.AdamW:
    """The ESM2 recipe: one AdamW, decay on all parameters (fairseq's Adam has no exclusion list). fairseq adds eps
    to √v before bias correction, torch after; with eps=1e-8 the difference only matters while √v ≲ 1e-7."""
    params = [p for name in PARAM_GROUP_NAMES for p in param_groups.get(name, [])]
    return torch.optim.AdamW(
        [dict(params=params, name="all")], lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, fused=fused
    )


# ----------------------------------------------------------------------------------------------------------------------
# Schedules: pure functions of the step and of training progress

SCHEDULES = ("constant", "cosine", "linear", "trapezoid")


def warmup_factor(step: int, warmup_steps: int) -> float:
    """Linear warm-up: (step+1)/warmup_steps for the first warmup_steps steps (0-based), then 1. Step 0 already
    gets a non-zero LR so no step is wasted."""
    if warmup_steps <= 0:
        return 1.0
    return min(1.0, (step + 1) / warmup_steps)


def decay_factor(progress: float, schedule: str, cooldown_frac: float, floor: float) -> float:
    """Shape of the LR after warm-up as a function of progress ∈ [0, 1] (fraction of training done); 1 at progress
    0 and exactly `floor` at progress 1. Progress above 1 (a time-budgeted run's last step measured just after the
    budget) is treated as 1.

        constant   1
        cosine     floor + (1−floor)·½(1 + cos(π·progress))
        linear     floor + (1−floor)·(1 − progress)
        trapezoid  1 until 1−cooldown_frac, then floor + (1−floor)·(1−progress)/cooldown_frac
    """
    if not progress >= 0:  # also rejects NaN
        raise ValueError(f"progress must be >= 0, got {progress}")
    if not 0 <= floor <= 1:
        raise ValueError(f"floor must be in [0, 1], got {floor}")
    progress = min(progress, 1.0)
    remaining = 1.0 - progress
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    if schedule == "linear":
        return floor + (1 - floor) * remaining
    if schedule == "trapezoid":
        if not 0 < cooldown_frac <= 1:
            raise ValueError(f"trapezoid needs cooldown_frac in (0, 1], got {cooldown_frac}")
        return floor + (1 - floor) * min(1.0, remaining / cooldown_frac)
    raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")


def lr_multiplier(
    step: int, progress: float, *, warmup_steps: int, schedule: str, cooldown_frac: float, floor: float
) -> float:
    """Multiplier on every group's `initial_lr`: warmup_factor(step) · decay_factor(progress).

    step: optimiser steps done (0-based). progress: fraction of training done, step/num_steps for a step budget or
    used/total seconds for a wall-clock budget (train.py computes it), so the LR reaches `floor` exactly when the
    budget ends, whatever the hardware speed. Warm-up counts steps in both cases: it exists to let the Adam moments
    settle, which takes steps, not seconds.
    """
    return warmup_factor(step, warmup_steps) * decay_factor(progress, schedule, cooldown_frac, floor)


def muon_momentum_at(step: int, warmup_steps: int = 300, start: float = 0.85, end: float = 0.95) -> float:
    """Muon momentum warm-up (modded-nanogpt record #9): linear from `start` at step 0 to `end` at warmup_steps,
    then constant. A lower momentum early lets the fast-changing early gradients through."""
    frac = 1.0 if warmup_steps <= 0 else min(step / warmup_steps, 1.0)
    return (1 - frac) * start + frac * end


def apply_schedule(optimizers: Sequence[torch.optim.Optimizer], lr_mult: float, muon_momentum: float | None) -> None:
    """Set every group's lr to initial_lr · lr_mult, and every Muon group's momentum to `muon_momentum` (None keeps
    it). Values are plain floats read by the (uncompiled) step, so changing them never recompiles anything."""
    has_muon = any(isinstance(opt, Muon) for opt in optimizers)
    if muon_momentum is not None and not has_muon:
        raise ValueError("muon_momentum was given but none of the optimisers is Muon")
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"] * lr_mult
            if muon_momentum is not None and isinstance(optimizer, Muon):
                group["momentum"] = muon_momentum


# ----------------------------------------------------------------------------------------------------------------------
# Gradient clipping


def clip_grad_norm(parameters: Iterable[nn.Parameter], max_norm: float | None) -> Tensor:
    """Global L2 norm of all gradients (a 0-D fp32 tensor; no host sync), clipping them to `max_norm` first if it
    is not None. Under DDP the gradients are already averaged, so every rank computes the same global norm."""
    params = [p for p in parameters if p.grad is not None]
    if max_norm is None:
        return torch.nn.utils.get_total_norm([p.grad for p in params]).float()
    return torch.nn.utils.clip_grad_norm_(params, max_norm).float()
