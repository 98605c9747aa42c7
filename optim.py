"""Optimisers for plm-speedrun: Muon for hidden matrices, Adam for the rest, the ESM2 AdamW recipe, schedules.

Reading order:
1. `newton_schulz`   — approximate orthogonalisation G ≈ U S Vᵀ ↦ U Vᵀ (Keller Jordan's quintic iteration).
2. `Muon`            — Nesterov momentum → Newton–Schulz → shape-scaled update; the orthogonalisation work is
                       split over data-parallel ranks and shared with an all-gather, for any world size.
3. `OptimConfig`, `build_optimizers` — the Muon/Adam split by parameter group ("speedrun") or one AdamW ("esm2").
4. Schedules as pure functions of (step, progress): `schedule` (from `lr_multiplier`, `muon_momentum_at`);
   `apply_schedule` writes them into the param groups as plain Python floats, so nothing compiled ever sees them.
5. `clip_grad_norm`.

This module never sees the model or the run: `train.py` passes the parameter groups and an `OptimConfig`.
See docs/OPTIM.md for the defaults and the reasoning behind them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn

# ----------------------------------------------------------------------------------------------------------------------
# Newton–Schulz orthogonalisation

# Keller Jordan's quintic iteration (Muon: kellerjordan.github.io/posts/muon; modded-nanogpt record of
# 2024-10-04): coefficients chosen to maximise the slope at zero, so small singular values grow fast; the price is
# that the output singular values only land in a band around 1 instead of converging to 1 (see tests/test_optim.py
# for the measured band).
QUINTIC_COEFFICIENTS = (3.4445, -4.7750, 2.0315)

def orthogonalisation_dtype(device: torch.device) -> torch.dtype:
    """The one place that picks Newton–Schulz precision: bf16 on CUDA (as in modded-nanogpt; the iteration is
    robust to bf16 rounding and its matmuls run at tensor-core speed), fp32 elsewhere (CPU bf16 matmuls are slow
    and CPU runs are for tests, which want tight comparisons)."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def newton_schulz(G: Tensor, steps: int = 5, dtype: torch.dtype | None = None) -> Tensor:
    """Approximate polar factor U Vᵀ of G = U S Vᵀ, batched over leading dimensions.

    G: (..., rows, cols), any float dtype. Returns the same shape in `dtype`, by default
    `orthogonalisation_dtype(G.device)` (bf16 on CUDA, fp32 on CPU; benchmarks/gpu_check.py runs the bf16
    iteration on a CPU too); the caller casts. The result is U p(S) Vᵀ for an odd polynomial p, so its singular
    vectors are exactly G's and only the singular values are approximate. For σ ≥ 2e-3·‖G‖_F, 5 steps put them
    in [0.68, 1.21]; smaller ones stay below the band (tests/test_optim.py derives the band from the coefficients).
    A zero matrix maps to zero, which lets `Muon` pad with zeros.
    """
    if G.ndim < 2:
        raise ValueError(f"newton_schulz needs a matrix (or a batch of them), got shape {tuple(G.shape)}")
    X = G.to(dtype or orthogonalisation_dtype(G.device))
    tall = G.size(-2) > G.size(-1)
    if tall:  # iterate on the wide orientation: X Xᵀ is then the smaller Gram matrix
        X = X.mT
    # Divide by the Frobenius norm (≥ spectral norm) so every singular value starts in [0, 1], where the polynomials
    # are designed to work.
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    a, b, c = QUINTIC_COEFFICIENTS
    for _ in range(steps):
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
    modded-nanogpt records of 2024-10-04, 2024-10-18 (distributed),
    2024-11-06 (momentum warm-up) and 2025-01-16 (batched)).

    For each 2-D parameter W (rows, cols) with gradient g, per step:

        buf ← m·buf + (1−m)·g                 (fp32 momentum, kept for every matrix on every rank)
        d   ← (1−m)·g + m·buf                 (Nesterov)
        u   ← newton_schulz(d) · √max(1, rows/cols)
        W   ← W − lr·u

    `lr` is the step in units of the orthogonalised update: with the shape factor, the change of W has an RMS of
    about lr/√cols per entry whatever the aspect ratio (github.com/KellerJordan/Muon). No weight decay: no
    experiment of ours measured one, so the option was removed.

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
        ns_steps: int = 5,
    ):
        if ns_steps < 1:
            raise ValueError(f"ns_steps must be >= 1, got {ns_steps}")
        super().__init__(params, dict(lr=lr, momentum=momentum, ns_steps=ns_steps))
        for group in self.param_groups:
            for p in group["params"]:
                if p.ndim != 2:
                    raise ValueError(f"Muon takes 2-D matrices only, got a parameter of shape {tuple(p.shape)}")
        # Compiled lazily and only for CUDA tensors: compiling on CPU would only slow the tests down.
        self._compiled_newton_schulz: Callable[..., Tensor] | None = None

    def _orthogonalise(self, X: Tensor, steps: int) -> Tensor:
        if X.device.type != "cuda":
            return newton_schulz(X, steps)
        if self._compiled_newton_schulz is None:
            self._compiled_newton_schulz = torch.compile(newton_schulz, dynamic=False, fullgraph=True)
        return self._compiled_newton_schulz(X, steps)

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
        #    (shape, dtype, Newton–Schulz steps), in param-group order.
        buckets: dict[tuple, list[tuple[nn.Parameter, dict]]] = {}
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            for p in params:
                if "momentum_buffer" not in self.state[p]:
                    self.state[p]["momentum_buffer"] = torch.zeros_like(p, dtype=torch.float32)
                key = (tuple(p.shape), p.dtype, group["ns_steps"])
                buckets.setdefault(key, []).append((p, group))
            if params:
                torch._foreach_lerp_([self.state[p]["momentum_buffer"] for p in params],
                                     [p.grad.float() for p in params], 1 - group["momentum"])

        # 2. Orthogonalise this rank's share of each bucket (matrix i on rank i % world, zero matrices as padding);
        #    start sharing it while the next bucket computes.
        pending = []
        for (shape, _, steps), items in buckets.items():
            per_rank = math.ceil(len(items) / world)
            padding = items[0][0].new_zeros(shape, dtype=torch.float32)
            mine = [
                self._nesterov_direction(*items[i]) if i < len(items) else padding
                for i in range(rank, per_rank * world, world)
            ]
            updates = self._orthogonalise(torch.stack(mine), steps)  # (per_rank, rows, cols)
            if world == 1:
                pending.append((items, updates.unsqueeze(0), None))
                continue
            gathered = updates.new_empty((world * per_rank, *shape))  # rank r's stack, then rank r+1's
            handle = all_gather_async(gathered, updates.contiguous())
            pending.append((items, gathered.view(world, per_rank, *shape), handle))  # [r, j] is matrix j·world + r

        # 3. Apply every update on every rank: per bucket one cast and one shape scaling (all its matrices share a
        #    shape), then one foreach update per param group.
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
                torch._foreach_sub_(params, updates, alpha=group["lr"])
        return loss


# ----------------------------------------------------------------------------------------------------------------------
# The Muon/Adam split and the ESM2 AdamW recipe

PARAM_GROUP_NAMES = ("hidden", "embed", "value_embed", "head", "scalar")
RECIPES = ("speedrun", "esm2")
HIDDEN_OPTIMIZERS = ("muon", "adamw")
MUON_KEYS = ("muon_momentum_start", "muon_momentum_end", "muon_momentum_warmup_steps", "ns_steps")
ESM2_KEYS = ("lr", "esm2_betas", "esm2_eps", "esm2_weight_decay")
SCHEDULES = ("constant", "cosine", "linear", "trapezoid")


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


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """The optimiser recipe and its schedules. LRs are peak values; schedules multiply them."""
    recipe: str = "speedrun"               # "speedrun": Muon on hidden matrices + Adam; "esm2": AdamW on everything
    # speedrun recipe
    lr_hidden: float = 0.05                # Muon LR of the hidden matrices (units of the orthogonalised update)
    lr_embed: float = 0.06                 # Adam LR of the token embedding and the value embeddings
    lr_head: float = 0.008                 # Adam LR of the MLM head
    lr_scalar: float = 0.04                # Adam LR of scalars and vectors (ndim < 2)
    adam_betas: tuple[float, float] = (0.8, 0.95)  # Adam betas
    adam_eps: float = 1e-10                # Adam eps
    muon_momentum_start: float = 0.85      # Muon momentum at step 0
    muon_momentum_end: float = 0.95        # Muon momentum after muon_momentum_warmup_steps
    muon_momentum_warmup_steps: int = 300  # steps of the linear Muon-momentum warm-up
    ns_steps: int = 5                      # Newton–Schulz iterations per Muon update
    hidden_optimizer: str = "muon"         # "adamw": hidden matrices join the Adam optimiser (isolated Muon ablation)
    lr_hidden_adamw: float = 0.003         # Adam LR of the hidden matrices when hidden_optimizer is adamw
    # esm2 recipe (Lin et al. 2023, Science): one AdamW, decay on every parameter
    lr: float = 4e-4                       # peak AdamW LR
    esm2_betas: tuple[float, float] = (0.9, 0.98)  # AdamW betas
    esm2_eps: float = 1e-8                 # AdamW eps
    esm2_weight_decay: float = 0.01        # decoupled AdamW weight decay
    # both recipes
    grad_clip: float = 0.0                 # global gradient-norm clip (0 = off)
    scheduler_type: str = "trapezoid"      # LR shape after warm-up: "trapezoid", "cosine", "linear" or "constant"
    lr_warmup_steps: int = 0               # steps of linear LR warm-up
    cooldown_frac: float = 0.4             # trapezoid: final fraction of the run (steps or clock) spent cooling down
    lr_floor: float = 0.1                  # LR at the end of the decay, as a fraction of the peak

    def __post_init__(self):
        def need(ok: bool, key: str, message: str):
            if not ok:
                raise ValueError(f"{key}: {message}, got {getattr(self, key)!r}")
        need(self.recipe in RECIPES, "recipe", f"must be one of {', '.join(RECIPES)}")
        need(self.hidden_optimizer in HIDDEN_OPTIMIZERS, "hidden_optimizer",
             f"must be one of {', '.join(HIDDEN_OPTIMIZERS)}")
        need(self.recipe == "speedrun" or self.hidden_optimizer == "muon", "hidden_optimizer",
             "only the speedrun recipe has a hidden-matrix optimiser to switch (recipe esm2 is AdamW throughout)")
        need(self.scheduler_type in SCHEDULES, "scheduler_type", f"must be one of {', '.join(SCHEDULES)}")
        for key in ("lr_hidden", "lr_hidden_adamw", "lr_embed", "lr_head", "lr_scalar", "lr", "adam_eps", "esm2_eps",
                    "esm2_weight_decay", "grad_clip"):
            need(getattr(self, key) >= 0, key, "must be >= 0")
        for key in ("muon_momentum_warmup_steps", "lr_warmup_steps"):
            need(getattr(self, key) >= 0, key, "must be >= 0")
        need(self.ns_steps >= 1, "ns_steps", "must be >= 1")
        for key in ("adam_betas", "esm2_betas", "muon_momentum_start", "muon_momentum_end"):
            values = getattr(self, key) if isinstance(getattr(self, key), tuple) else (getattr(self, key),)
            need(all(0 <= v < 1 for v in values), key, "must be in [0, 1)")
        need(0 <= self.lr_floor <= 1, "lr_floor", "must be in [0, 1]")
        need(0 <= self.cooldown_frac <= 1, "cooldown_frac", "must be in [0, 1]")
        need(self.scheduler_type != "trapezoid" or self.cooldown_frac > 0, "cooldown_frac",
             "the trapezoid schedule needs a cooldown > 0")

    def inert_keys(self) -> dict[str, str]:
        """Keys that do nothing under this config, each with the reason (config.inert): refused when given on the
        command line, a logged warning when a YAML sets them, so that no value is silently ignored."""
        speedrun = ("lr_hidden", "lr_embed", "lr_head", "lr_scalar", "adam_betas", "adam_eps", "hidden_optimizer",
                    "lr_hidden_adamw") + MUON_KEYS
        if self.recipe == "esm2":
            inert = {key: "with recipe esm2 (it belongs to the speedrun recipe)" for key in speedrun}
        else:
            inert = {key: "with recipe speedrun (it belongs to the esm2 recipe)" for key in ESM2_KEYS}
            if self.uses_muon:
                inert["lr_hidden_adamw"] = "with hidden_optimizer muon (it is the LR of hidden_optimizer adamw)"
            else:
                inert |= {key: "with hidden_optimizer adamw (no Muon is built)" for key in ("lr_hidden",) + MUON_KEYS}
        if self.scheduler_type != "trapezoid":
            inert["cooldown_frac"] = f"with scheduler_type {self.scheduler_type} (only the trapezoid has a cooldown)"
        if self.scheduler_type == "constant":
            inert["lr_floor"] = "with scheduler_type constant (the LR never decays)"
        return inert

    @property
    def uses_muon(self) -> bool:
        return self.recipe == "speedrun" and self.hidden_optimizer == "muon"

    @property
    def peak_lr(self) -> float:
        """The LR the log reports: the hidden matrices' for the speedrun recipe, AdamW's for esm2."""
        if self.recipe == "esm2":
            return self.lr
        return self.lr_hidden if self.uses_muon else self.lr_hidden_adamw


def build_optimizers(param_groups: dict[str, list[nn.Parameter]], config: OptimConfig, *,
                     all_params: Iterable[nn.Parameter] | None = None, fused: bool | None = None
                     ) -> list[torch.optim.Optimizer]:
    """Build the optimisers for one model. Call `.step()` / `.zero_grad()` on each; pass the list to
    `apply_schedule`. Every param group gets `name` (for logs) and `initial_lr` (its peak LR; schedules multiply it).

    recipe "speedrun" → [Muon(hidden), AdamW(embed, value_embed, head, scalar; no weight decay)], empty groups
      skipped: Muon for the hidden matrices, Adam for what Muon is not for (github.com/KellerJordan/Muon).
      With hidden_optimizer "adamw", the hidden matrices are one more group of that AdamW (LR lr_hidden_adamw, no
      weight decay, like Muon) and nothing else changes: the isolated Muon ablation.
    recipe "esm2" → [AdamW(all parameters)] with decoupled weight decay on every parameter, biases and norm
      weights included, as fairseq (which trained ESM2) does. fairseq adds eps to √v before bias correction, torch
      after; with eps=1e-8 the difference only matters while √v ≲ 1e-7.

    `all_params` (e.g. `model.parameters()`), when given, also checks that every model parameter is in a group.
    `fused` is passed to torch.optim.AdamW (None: torch's default implementation).
    """
    check_param_groups(param_groups, all_params)
    c = config
    if c.recipe == "esm2":
        params = [p for name in PARAM_GROUP_NAMES for p in param_groups.get(name, [])]
        optimizers = [torch.optim.AdamW([dict(params=params, name="all")], lr=c.lr, betas=c.esm2_betas,
                                        eps=c.esm2_eps, weight_decay=c.esm2_weight_decay, fused=fused)]
    else:
        optimizers = []
        if param_groups.get("hidden") and c.uses_muon:
            optimizers.append(Muon([dict(params=list(param_groups["hidden"]), name="hidden")], lr=c.lr_hidden,
                                   momentum=c.muon_momentum_end, ns_steps=c.ns_steps))
        adam_lrs = {} if c.uses_muon else {"hidden": c.lr_hidden_adamw}
        adam_lrs |= {"embed": c.lr_embed, "value_embed": c.lr_embed, "head": c.lr_head, "scalar": c.lr_scalar}
        adam_groups = [dict(params=list(param_groups[name]), lr=group_lr, name=name)
                       for name, group_lr in adam_lrs.items() if param_groups.get(name)]
        if adam_groups:
            optimizers.append(torch.optim.AdamW(adam_groups, betas=c.adam_betas, eps=c.adam_eps, weight_decay=0.0,
                                                fused=fused))
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            group["initial_lr"] = group["lr"]
    return optimizers


# ----------------------------------------------------------------------------------------------------------------------
# Schedules: pure functions of the step and of training progress

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
    """Muon momentum warm-up (modded-nanogpt record of 2024-11-06): linear from `start` at step 0 to `end` at
    warmup_steps, then constant. A lower momentum early lets the fast-changing early gradients through."""
    frac = 1.0 if warmup_steps <= 0 else min(step / warmup_steps, 1.0)
    return (1 - frac) * start + frac * end


def schedule(config: OptimConfig, step: int, progress: float) -> tuple[float, float | None]:
    """(LR multiplier, Muon momentum or None) at optimiser step `step` and training progress ∈ [0, 1]."""
    lr_mult = lr_multiplier(step, progress, warmup_steps=config.lr_warmup_steps, schedule=config.scheduler_type,
                            cooldown_frac=config.cooldown_frac, floor=config.lr_floor)
    if not config.uses_muon:
        return lr_mult, None
    return lr_mult, muon_momentum_at(step, config.muon_momentum_warmup_steps, config.muon_momentum_start,
                                     config.muon_momentum_end)


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
