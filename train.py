"""Pre-train a protein masked-LM encoder: one command from a YAML file to a verified, resumable, self-documenting run.

    python train.py --yaml_path example_yamls/cpu_demo.yaml                      # one process (CPU or one GPU)
    torchrun --standalone --nproc_per_node=8 train.py --yaml_path example_yamls/default.yaml --lr_hidden 0.04
    python train.py --help                                                       # every key, default and unit

The config is four component configs (model.py's ModelConfig, dataloader.py's DataConfig, optim.py's OptimConfig
and RunConfig below), read by config.py: defaults, then the YAML, then `--key value`, strictly. This file reads top
to bottom: setup (distributed, seeds, run record) → build (data, model, optimiser) → compile and an untimed warm-up
→ the loop (schedule → validation and checkpoint with the clock stopped → stop if last → micro-batches →
optimiser step → log) → the end-of-run record (runlog.py: text log, JSON summary, plot, wandb, Hub push).
"""
import contextlib
import copy
import dataclasses
import datetime
import json
import math
import os
import random
import signal
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import yaml

import checkpoint
import config
import controls
import dataloader
import distributed
import optim
import provenance
import runlog
import validation
from config import ConfigError
from dataloader import DataConfig
from distributed import Placement
from model import PLM, ModelConfig
from optim import OptimConfig
from shards import ShardError, find_shards

ROOT = Path(__file__).resolve().parent
CORE_FILES = ("train.py", "config.py", "distributed.py", "model.py", "optim.py", "dataloader.py", "validation.py",
              "vocab.py", "shards.py", "checkpoint.py", "controls.py", "provenance.py", "runlog.py")
SECRET_ENV = ("HF_TOKEN", "WANDB_API_KEY")
PRECISION = {None: "bf16 autocast",  # CUDA; on CPU, fp32 and whether subnormals are flushed (distributed.setup)
             True: "fp32, subnormals flushed to zero",
             False: "fp32; warning: some intra-op thread keeps subnormal floats (torch's thread pool started before "
                    "distributed.setup), which can slow it many times"}


@dataclass(frozen=True)
class RunConfig:
    """The run around the components: its files, seed, length, clock, validation, checkpoints and integrations."""
    log_name: str | None = None            # run id naming the log, summary and checkpoint folder (None = time + random)
    log_dir: str = "logs"                  # directory of {run_id}.txt, .json and .png
    save_dir: str = "checkpoints"          # checkpoints go to {save_dir}/{run_id}/step_{step:06d}/
    resume_from: str | None = None         # checkpoint directory to resume from: model, optimiser, loader, RNG, clock
    seed: int = 42                         # seed of the initial weights and the training stream (order, training masks)
    num_steps: int = 10000                 # optimiser steps (the run stops earlier at the time budget or target)
    max_train_time_hours: float | None = None  # training-clock budget in hours (schedule: whichever limit ends first)
    eval_every: int = 250                  # steps between validations (also at step 0 and at the end; 0 = end only)
    target_loss: float = 2.1               # validation loss per masked token that defines "time to target"
    stop_at_target: bool = False           # stop at the first validation with loss <= target_loss
    controls: bool = True                  # score the no-learning controls (controls.py) on the validation masks
    controls_max_train_tokens: int = 100_000_000  # train tokens the controls count, at most (one bounded pass)
    save_every: int = 0                    # steps between checkpoints (0 = only at the end)
    log_every: int = 10                    # steps between log lines
    untimed_warmup_steps: int = 3          # real steps run (and undone) before the clock starts, to compile
    compile_model: bool | None = None      # torch.compile the model (None = on with CUDA, off on CPU)
    wandb: bool = False                    # mirror the log to Weights & Biases (offline mode without WANDB_API_KEY)
    wandb_project: str = "plm-speedrun"    # wandb project name
    push_to_hub: bool = False              # push the final model to the Hugging Face Hub (needs HF_TOKEN, hub_repo_id)
    hub_repo_id: str | None = None         # Hub repository, e.g. "your-name/plm-speedrun-run1" (no default on purpose)

    def __post_init__(self):
        for key in ("num_steps", "eval_every", "save_every", "untimed_warmup_steps", "controls_max_train_tokens"):
            if getattr(self, key) < 0:
                raise ValueError(f"{key}: must be >= 0, got {getattr(self, key)}")
        if self.log_every < 1:
            raise ValueError(f"log_every: must be >= 1, got {self.log_every}")
        if self.max_train_time_hours is not None and self.max_train_time_hours <= 0:
            raise ValueError(f"max_train_time_hours: must be > 0, got {self.max_train_time_hours}")
        if self.push_to_hub and not self.hub_repo_id:
            raise ValueError("push_to_hub: true needs hub_repo_id (e.g. your-name/plm-speedrun-run1)")
        if self.log_name is not None and (not self.log_name or "/" in self.log_name or self.log_name.startswith(".")):
            raise ValueError(f"log_name: {self.log_name!r} must be a plain file name")


SECTIONS = {"model": ModelConfig, "data": DataConfig, "optim": OptimConfig, "run": RunConfig}
# Keys that may differ between a checkpoint's run and the run resuming it: they change bookkeeping, not the numbers.
RESUMABLE_CHANGES = {"log_name", "log_dir", "save_dir", "resume_from", "eval_every", "save_every", "log_every",
                     "num_workers", "prefetch_factor", "grad_accum", "compile_model", "untimed_warmup_steps",
                     "stop_at_target", "controls", "controls_max_train_tokens", "wandb", "wandb_project",
                     "push_to_hub", "hub_repo_id"}


@dataclass(frozen=True)
class Config:
    """The run's config: one object per component, each handed only to its component."""
    model: ModelConfig
    data: DataConfig
    optim: OptimConfig
    run: RunConfig

    def flat(self) -> dict:
        """Every key and its value as JSON types: the log's config section, the summary's and the checkpoint's."""
        return json.loads(json.dumps({k: v for part in (self.model, self.data, self.optim, self.run)
                                      for k, v in dataclasses.asdict(part).items()}))


def parse_config(argv: list[str]) -> tuple[Config, set[str]]:
    """Defaults, then `--yaml_path FILE`, then `--key value` arguments -> (Config, keys set). See config.parse."""
    parts, given = config.parse(SECTIONS, argv)
    return Config(**parts), given


@dataclass
class RunState:
    """What survives a resume besides the model, optimiser, loader and RNG states (checkpoint's train_state)."""
    step: int = 0                          # optimiser steps done
    tokens: int = 0                        # real (non-padding) training tokens seen, all ranks
    train_time_s: float = 0.0              # training clock at the last checkpoint (the Clock runs between them)
    train_log: list = field(default_factory=list)    # one entry per log line
    val_log: list = field(default_factory=list)      # one entry per validation
    checkpoints: list = field(default_factory=list)  # checkpoint directories written, oldest first
    target_reached: dict | None = None     # {"train_time_s", "step", "tokens"} at the first validation <= target


def train_step(model, raw_model: PLM, optimizers, batches: list[dict], lr_mult: float, momentum: float | None,
               grad_clip: float, proc: Placement, autocast) -> tuple[torch.Tensor, int, int]:
    """One optimiser step over a step's micro-batches -> (this rank's loss sum, global masked, global tokens).

    The loss is normalised by the GLOBAL count of masked tokens: each micro-step's loss sum is scaled by
    world_size / global_count, so DDP's gradient average gives sum(loss) / global_count.
    """
    masked, tokens = proc.sum([float(sum(int((b["labels"] != -100).sum()) for b in batches)),
                            float(sum(int((b["seq_ids"] >= 0).sum()) for b in batches))])
    scale = proc.world_size / max(masked, 1.0)
    loss_sum = torch.zeros((), device=proc.device)
    for micro, batch in enumerate(batches):
        batch = dataloader.to_device(batch, proc.device)
        sync = not proc.distributed or micro == len(batches) - 1
        with contextlib.nullcontext() if sync else model.no_sync():
            with autocast:
                micro_loss, _ = model(batch["input_ids"], batch["seq_ids"], batch["labels"])
            (micro_loss * scale).backward()
        loss_sum += micro_loss.detach().float()
    optim.apply_schedule(optimizers, lr_mult, momentum)
    if grad_clip > 0:
        optim.clip_grad_norm(raw_model.parameters(), grad_clip)
    for opt in optimizers:
        opt.step()
    for opt in optimizers:
        opt.zero_grad(set_to_none=True)
    return loss_sum, int(masked), int(tokens)


def next_step_batches(train_iter, step: int, grad_accum: int) -> list[dict]:
    """The grad_accum micro-batches of optimiser step `step` from the loader (which says which step they are)."""
    batches = []
    for micro in range(grad_accum):
        got_step, got_micro, batch = next(train_iter)
        assert (got_step, got_micro) == (step, micro), f"loader gave {(got_step, got_micro)}, expected {(step, micro)}"
        batches.append(batch)
    return batches


def save_checkpoint(path: Path, raw_model: PLM, optimizers, loader, state: RunState, identity: dict, proc: Placement,
                    record) -> None:
    """path/ by rank 0 (weights and optimiser states are the same on every rank), with the clock stopped.
    identity: run_id, config and world_size, stored beside the state for the resume check."""
    # Non-finite weights must never become the "last good" checkpoint; every rank reaches the same verdict.
    if not all(torch.isfinite(p).all() for p in raw_model.parameters()):
        raise FloatingPointError(f"non-finite weights at step {state.step}, found before checkpointing; last "
                                 f"good checkpoint: {state.checkpoints[-1] if state.checkpoints else 'none'}")
    train_state = {**dataclasses.asdict(state), **identity, "checkpoints": state.checkpoints + [str(path)],
                   "optimizers": [opt.state_dict() for opt in optimizers], "loader": loader.state_dict(),
                   "rng": checkpoint.rng_state()}
    if proc.master:
        checkpoint.save_checkpoint(path, raw_model, train_state)
    if proc.distributed:
        dist.barrier(group=proc.host_group)
    state.checkpoints.append(str(path))
    record.write(f"checkpoint: {path}")


class StopSignal:
    """From construction until `restore()`, SIGTERM / SIGINT set `signum`: the loop finishes its step, checkpoints
    and stops."""

    def __init__(self):
        self.signum = None
        self.previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}

    def _on_signal(self, signum, _frame):
        self.signum = signum

    def restore(self):
        for s, handler in self.previous.items():
            signal.signal(s, handler)


def main(argv: list[str]) -> dict:
    # ---- Setup: configuration, distributed, seeds, run record --------------------------------------------------------
    run_start = provenance.start()  # load average and clocks before any work, for the record
    cfg, given = parse_config(argv)
    run, data = cfg.run, cfg.data
    secrets = {name: os.environ.get(name) for name in SECRET_ENV}
    if run.push_to_hub and not secrets["HF_TOKEN"]:
        raise ConfigError("push_to_hub: true needs the environment variable HF_TOKEN (a write token)")
    resume = checkpoint.load_train_state(run.resume_from) if run.resume_from is not None else None
    if resume is not None:
        changed = sorted(k for k, v in cfg.flat().items()
                         if k not in RESUMABLE_CHANGES and resume["config"].get(k) != v)
        if changed:
            raise ConfigError(f"resume_from: the config differs from the checkpoint's in {changed}; an exact resume "
                              "needs the same values (pass the run's YAML again)")
    for split in ("train", "valid"):  # missing or corrupt data stops the run here, naming the file, before any work
        dataloader.check_shards(find_shards(data.data_dir, data.data_name, split))

    proc = distributed.setup()
    device, master = proc.device, proc.master
    try:
        rows_per_micro = data.rows_per_micro(proc.world_size)  # derived once: rows per micro-batch on each rank
    except ValueError as e:
        raise ConfigError(str(e)) from None
    compile_model = run.compile_model if run.compile_model is not None else device.type == "cuda"
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    budget_s = run.max_train_time_hours * 3600 if run.max_train_time_hours is not None else None

    if resume is not None and run.log_name is None:
        run_id = f"{resume['run_id']}-resumed-{resume['step']:06d}"
    else:
        run_id = run.log_name or datetime.datetime.now().strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
    if proc.distributed:  # every rank must use rank 0's id (its clock and random suffix)
        box = [run_id]
        dist.broadcast_object_list(box, src=0)
        run_id = box[0]
    log_dir, run_dir = Path(run.log_dir), Path(run.save_dir) / run_id
    summary_path, plot_path = log_dir / f"{run_id}.json", log_dir / f"{run_id}.png"
    # A run resumed under its own id continues its text log; any other run starts a new one.
    record = runlog.RunRecord(log_dir / f"{run_id}.txt" if master else None, list(secrets.values()),
                              append=resume is not None and resume["run_id"] == run_id)
    sources = {name: (ROOT / name).read_text() for name in CORE_FILES}
    record.write(provenance.code_sections(sources), echo=False)
    record.write(f"{provenance.CONFIG_HEADER}\n" + yaml.safe_dump(cfg.flat(), sort_keys=False).rstrip(), echo=False)
    git = runlog.git_state()  # at the start: files edited while the run goes must not change what it reports
    record.write(f"run id: {run_id}\nkeys set by YAML/CLI: {sorted(given)}\n"
                 + runlog.environment_report(device, proc.world_size, git))
    for key, reason in config.inert(vars(cfg), given).items():  # only YAML keys are left: parse refused the CLI ones
        record.write(f"warning: {key} (set in the YAML) has no effect {reason}")
    prov = provenance.RunProvenance(sources, data.data_dir, data.data_name, device, proc.world_size, run_start,
                                    hash_data=master)  # code and shard hashes, hardware: what records.py checks
    record.write(prov.header())
    record.write(f"derived: {data.batch_size // data.row_length} rows of {data.row_length} tokens per step = "
                 f"{rows_per_micro} rows per micro-batch × {data.grad_accum} micro-steps × {proc.world_size} ranks; "
                 f"compile: {compile_model}; precision: {PRECISION[proc.subnormals_flushed]}; "
                 f"time budget: {f'{budget_s:.0f} s' if budget_s else 'none'}")
    random.seed(run.seed)
    np.random.seed(run.seed)
    torch.manual_seed(run.seed)

    # ---- Build: data, then model, then optimiser ---------------------------------------------------------------------
    def eval_batches(split: str) -> validation.ValidationBatches:
        """The fixed-mask rows of a split, in batches shaped like a training micro-batch (this rank's share)."""
        return validation.load_validation_batches(data.data_dir, data.data_name, split, row_length=data.row_length,
                                                  max_length=data.max_length, mask_rate=data.val_mask_rate,
                                                  seed=data.val_mask_seed, world_size=proc.world_size, rank=proc.rank,
                                                  rows_per_batch=rows_per_micro)

    new_loader = lambda: dataloader.TrainLoader(data, seed=run.seed, world_size=proc.world_size, rank=proc.rank,  # noqa
                                                pin_memory=device.type == "cuda")
    loader, val_batches = new_loader(), eval_batches("valid")
    has_test = any(Path(data.data_dir).glob(f"{data.data_name}_test_*.bin"))
    record.write(f"data: {data.data_dir}/{data.data_name}: {loader.shard_tokens:,} training tokens in "
                 f"{len(loader.layout.paths)} shards; validation {val_batches.stats}; test split: "
                 f"{'yes' if has_test else 'none'}")
    # The no-learning controls on exactly these masked positions, once, before the clock starts: every validation
    # loss is reported with its gain below the best of them.
    control_losses = None
    if run.controls:
        t_controls = time.perf_counter()
        control_model = controls.fit_controls(find_shards(data.data_dir, data.data_name, "train"),
                                              data.val_mask_rate, run.controls_max_train_tokens)
        sums = control_model.score(controls.rows_to_sequences(val_batches))
        keys = sorted(sums)  # each rank scored its own rows
        sums = dict(zip(keys, proc.sum([float(sums[k]) for k in keys])))
        control_losses = controls.summarise(sums)
        record.write(controls.describe(control_losses, control_model)
                     + f"; {time.perf_counter() - t_controls:.1f} s, outside the clock")

    raw_model = PLM(cfg.model)
    raw_model.init_weights()
    raw_model.to(device)
    n_params, n_params_non_embedding = raw_model.num_parameters(), raw_model.num_parameters(non_embedding=True)
    seq_len = runlog.attended_length(val_batches)
    flops_per_token = raw_model.flops_per_token(seq_len)
    record.write(f"model: {n_params:,} parameters ({n_params_non_embedding:,} non-embedding); "
                 f"{flops_per_token / 1e6:.1f} MFLOP per training token (attended length {seq_len:.0f})")
    optimizers = optim.build_optimizers(raw_model.parameter_groups(), cfg.optim, all_params=raw_model.parameters(),
                                        fused=True if device.type == "cuda" else None)

    # ---- Compile, then an untimed warm-up that is undone -------------------------------------------------------------
    model, logits_fn = distributed.compile_and_wrap(raw_model, device, compile_model, proc.distributed)
    step_args = (model, raw_model, optimizers)
    step_kwargs = dict(grad_clip=cfg.optim.grad_clip, proc=proc, autocast=autocast)
    if run.untimed_warmup_steps:
        t_warm = time.perf_counter()
        initial = {"model": copy.deepcopy(raw_model.state_dict()), "rng": checkpoint.rng_state(),
                   "optimizers": [copy.deepcopy(opt.state_dict()) for opt in optimizers]}
        warm_iter = iter(loader)
        for warm_step in range(run.untimed_warmup_steps):
            lr_mult, momentum = optim.schedule(cfg.optim, warm_step, warm_step / max(run.num_steps, 1))
            train_step(*step_args, next_step_batches(warm_iter, warm_step, data.grad_accum), lr_mult, momentum,
                       **step_kwargs)
        model.eval()
        for batch in (val_batches[:1] + val_batches[-1:]):  # both batch shapes, so validation compiles here too
            validation.mlm_metrics(logits_fn, [batch], device, autocast)
        model.train()
        raw_model.load_state_dict(initial["model"])
        for opt, opt_state in zip(optimizers, initial["optimizers"]):
            opt.load_state_dict(opt_state)
        checkpoint.set_rng_state(initial["rng"])
        del initial, warm_iter
        loader = new_loader()  # a fresh loader at step 0: its position and its statistics restart
        record.write(f"untimed warm-up: {run.untimed_warmup_steps} steps + validation shapes in "
                     f"{time.perf_counter() - t_warm:.1f} s, then model, optimiser, loader and RNG restored")

    # ---- State of the run (fresh, or restored from a checkpoint) -----------------------------------------------------
    state = RunState()
    if resume is not None:
        raw_model.load_state_dict(checkpoint.load_model(run.resume_from).state_dict())
        for opt, opt_state in zip(optimizers, resume["optimizers"]):
            opt.load_state_dict(opt_state)
        loader.load_state_dict(resume["loader"])
        checkpoint.set_rng_state(resume["rng"])
        state = RunState(**{f.name: resume[f.name] for f in dataclasses.fields(RunState)})
        record.write(f"resumed from {run.resume_from}: step {state.step}, {state.tokens:,} tokens, "
                     f"train time {state.train_time_s:.1f} s")
    clock = runlog.Clock(device, state.train_time_s)
    train_iter = iter(loader)
    wandb_run = runlog.Wandb(run.wandb_project if run.wandb else None, run_id, cfg.flat(), run.log_dir,
                             bool(secrets["WANDB_API_KEY"]), record) if master else None
    status, message, test_result = "running", None, None

    def summary() -> dict:
        """The JSON record of the run so far (rewritten after every validation and at the end)."""
        t = clock.read()
        reached = state.target_reached or {}
        return {"run_id": run_id, "status": status, "message": message, "signal": stop.signum,
                "config": cfg.flat(), "n_params": n_params, "n_params_non_embedding": n_params_non_embedding,
                "world_size": proc.world_size, "device": str(device), "hardware": runlog.hardware_name(device),
                "subnormals_flushed": proc.subnormals_flushed,
                "steps": state.step, "tokens": state.tokens, "train_time_s": t,
                "tokens_per_s": state.tokens / t if t > 0 else None, "target_loss": run.target_loss,
                "time_to_target_s": reached.get("train_time_s"), "step_to_target": reached.get("step"),
                "tokens_to_target": reached.get("tokens"), "val": state.val_log,
                "final_val_loss": state.val_log[-1]["loss"] if state.val_log else None, "test": test_result,
                "controls": control_losses, "final_gain": state.val_log[-1]["gain"] if state.val_log else None,
                "train": state.train_log, "checkpoints": state.checkpoints, "resumed_from": run.resume_from,
                "peak_memory_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
                "loader": loader.stats(), "git": git,
                "versions": {"python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.version.cuda},
                "provenance": prov.summary(val_mask_rate=data.val_mask_rate, val_mask_seed=data.val_mask_seed,
                                           val_stats=val_batches.stats, checkpoints=state.checkpoints)}

    def write_summary() -> dict:
        return runlog.write_summary(summary_path, summary(), record) if master else provenance.seal(summary())

    bar = runlog.progress_bar(run.num_steps, state.step, run_id, record) if master else None
    last_logged = {"step": state.step, "tokens": state.tokens, "time": clock.read()}
    record.write(f"training: steps {state.step} -> {run.num_steps}, eval every {run.eval_every or 'end only'}, "
                 f"save every {run.save_every or 'end only'}, target loss {run.target_loss}")

    # ---- The loop ----------------------------------------------------------------------------------------------------
    stop = StopSignal()
    clock.start()
    try:
        while True:
            # Schedule values. Rank 0's clock and any rank's signal are shared, so every rank makes the same decisions.
            train_time, signalled = proc.sum([clock.read() if master else 0.0, float(stop.signum is not None)])
            # The schedule follows whichever limit ends the run first (steps or clock), so either way it cools down.
            progress = min(max(state.step / max(run.num_steps, 1), train_time / budget_s if budget_s else 0.0), 1.0)
            lr_mult, momentum = optim.schedule(cfg.optim, state.step, progress)
            last = state.step >= run.num_steps or (budget_s is not None and train_time >= budget_s) or signalled > 0

            # Validation with the clock stopped (not on an interrupt: the grace period is for the checkpoint).
            due = run.eval_every and state.step % run.eval_every == 0
            if (last and not signalled or due) and not (state.val_log and state.val_log[-1]["step"] == state.step):
                clock.stop()
                model.eval()
                val = validation.mlm_metrics(logits_fn, val_batches, device, autocast)
                model.train()
                gain = control_losses["best"] - val["loss"] if control_losses else None  # nats below the best control
                state.val_log.append({"step": state.step, "tokens": state.tokens, "train_time_s": clock.elapsed,
                                      **val, "gain": gain})
                record.write(runlog.val_line(state.val_log[-1], run.num_steps))
                if state.target_reached is None and val["loss"] <= run.target_loss:
                    state.target_reached = {"train_time_s": clock.elapsed, "step": state.step, "tokens": state.tokens}
                    record.write(f"TARGET val_loss {val['loss']:.4f} <= {run.target_loss} at step {state.step}: "
                                 f"train_time {clock.elapsed:.1f} s, {state.tokens:,} tokens")
                    last = last or run.stop_at_target
                if wandb_run:
                    wandb_run.log({f"val/{k}": v for k, v in val.items()} | {"train_time_s": clock.elapsed}, state.step)
                write_summary()
                clock.start()
            # Checkpoint with the clock stopped.
            if (last or run.save_every and state.step % run.save_every == 0) and state.step > 0 \
                    and not (state.checkpoints and state.checkpoints[-1].endswith(f"step_{state.step:06d}")):
                clock.stop()
                state.train_time_s = clock.elapsed
                save_checkpoint(run_dir / f"step_{state.step:06d}", raw_model, optimizers, loader, state,
                                {"run_id": run_id, "config": cfg.flat(), "world_size": proc.world_size}, proc, record)
                clock.start()
            if last:
                break

            # Micro-batches and the optimiser step.
            batches = next_step_batches(train_iter, state.step, data.grad_accum)
            loss_sum, masked, tokens = train_step(*step_args, batches, lr_mult, momentum, **step_kwargs)
            state.step += 1
            state.tokens += tokens
            if bar is not None:
                bar.update(1)

            # Log: the global loss per masked token (a sum over ranks), throughput since the last log line.
            if state.step % run.log_every == 0 or state.step == run.num_steps:
                if proc.distributed:
                    dist.all_reduce(loss_sum)
                loss = loss_sum.item() / max(masked, 1)
                if not math.isfinite(loss):
                    raise FloatingPointError(
                        f"loss is {loss} at step {state.step} (last finite log line: step "
                        f"{state.train_log[-1]['step'] if state.train_log else 'none'}); last good checkpoint: "
                        f"{state.checkpoints[-1] if state.checkpoints else 'none (no checkpoint written yet)'}")
                now = clock.read()
                dt = max(now - last_logged["time"], 1e-9)
                tps = (state.tokens - last_logged["tokens"]) / dt
                peak = runlog.peak_flops(device)
                eta = (run.num_steps - state.step) * dt / (state.step - last_logged["step"])
                state.train_log.append({"step": state.step, "loss": loss, "lr": cfg.optim.peak_lr * lr_mult,
                                        "tokens": state.tokens, "train_time_s": now, "tokens_per_s": tps,
                                        "mfu": flops_per_token * tps / (peak * proc.world_size) if peak else None})
                record.write(runlog.train_line(state.train_log[-1], run.num_steps,
                                               min(eta, max(budget_s - now, 0.0)) if budget_s else eta),
                             echo=bar is None or not sys.stderr.isatty())
                if bar is not None:
                    bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
                if wandb_run:
                    wandb_run.log({"train/loss": loss, "train/lr": state.train_log[-1]["lr"], "train/tokens_per_s": tps,
                                   "train_time_s": now}, state.step)
                last_logged = {"step": state.step, "tokens": state.tokens, "time": now}
        clock.stop()
        if stop.signum is not None or signalled:
            status = "interrupted"
            message = (f"stopped by signal {stop.signum or 'on another rank'} at step {state.step}; "
                       f"checkpoint {state.checkpoints[-1] if state.checkpoints else 'none'}")
        else:
            status = "ok"
            if has_test:
                model.eval()
                test_result = validation.mlm_metrics(logits_fn, eval_batches("test"), device, autocast)
                record.write(f"test: loss:{test_result['loss']:.4f} ppl:{test_result['perplexity']:.3f} "
                             f"acc:{test_result['accuracy']:.4f} masked tokens:{test_result['masked_tokens']}")
    except FloatingPointError as e:
        status, message = "nan", str(e)
        record.write(f"STOPPED: {message}")
    except BaseException as e:
        status, message = "error", f"{type(e).__name__}: {e}"
        record.write(f"STOPPED with an error at step {state.step}: {message}")
        raise
    finally:
        stop.restore()
        if bar is not None:
            bar.close()
            record.echo = record.print
        if clock.running:
            clock.stop()
        result = write_summary()
        if master:
            runlog.plot_losses(plot_path, state.train_log, state.val_log, run.target_loss, run_id, control_losses)
        if wandb_run:
            wandb_run.finish(result)

    # ---- End of run: the record, then the optional Hub push ----------------------------------------------------------
    record.write(runlog.final_line(result) + f"\nsummary: {summary_path}\nplot: {plot_path}")
    if status == "ok" and run.push_to_hub and master and state.checkpoints:
        runlog.push_to_hub(Path(state.checkpoints[-1]), run.hub_repo_id, secrets["HF_TOKEN"], summary_path, record)
    if proc.distributed:
        dist.barrier(group=proc.host_group)
        dist.destroy_process_group()
    return result


if __name__ == "__main__":
    if sys.argv[1:] in (["--help"], ["-h"]):
        print(__doc__ + "\n" + config.reference_table(SECTIONS))
        sys.exit(0)
    try:
        outcome = main(sys.argv[1:])
    except (ConfigError, FileNotFoundError, ShardError) as e:
        sys.exit(f"train.py: {e}")
    if outcome["status"] == "interrupted":
        sys.exit(128 + (outcome["signal"] or signal.SIGTERM))  # the shell's convention for "killed by signal N"
    sys.exit(0 if outcome["status"] == "ok" else 1)
