"""Pre-train a protein masked-LM encoder: one command from a YAML file to a verified, resumable, self-documenting run.

    python train.py --yaml_path example_yamls/cpu_demo.yaml                      # one process (CPU or one GPU)
    torchrun --standalone --nproc_per_node=8 train.py --yaml_path example_yamls/default.yaml --lr_hidden 0.04

Defaults live in `Config`; the YAML overrides them and `--key value` overrides the YAML. The file reads top to
bottom: configuration → setup (distributed, seeds, run record) → build (data, model, optimiser) → compile and
untimed warm-up → the loop (schedule values → validation with the clock stopped, checkpoint if due → stop if
last → micro-batches → optimiser step → log) → test split, summary, plot, Hub push.

The run record: rank 0 writes `{log_dir}/{run_id}.txt` (sources, resolved config, environment, one line per log
step and per validation), `{log_dir}/{run_id}.json` (the machine-readable summary) and `{log_dir}/{run_id}.png`.
"""
import contextlib
import copy
import dataclasses
import datetime
import difflib
import json
import math
import os
import platform
import random
import signal
import subprocess
import sys
import time
import types
import typing
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch.nn.parallel import DistributedDataParallel as DDP

import checkpoint
import controls
import dataloader
import optim
import provenance
import validation
from model import PLM, ModelConfig
from shards import ShardError, find_shards
from vocab import VOCAB_SIZE

ROOT = Path(__file__).resolve().parent
CORE_FILES = ("train.py", "model.py", "optim.py", "dataloader.py", "vocab.py", "shards.py", "checkpoint.py",
              "controls.py", "provenance.py", "validation.py")
SECRET_ENV = ("HF_TOKEN", "WANDB_API_KEY")
# Keys people pass tokens with (the prior art's --token/--wandb_token): refused, with the variable to use instead.
SECRET_KEYS = {"token": "HF_TOKEN", "hf_token": "HF_TOKEN", "hub_token": "HF_TOKEN", "huggingface_token": "HF_TOKEN",
               "wandb_token": "WANDB_API_KEY", "wandb_api_key": "WANDB_API_KEY", "wandb_key": "WANDB_API_KEY"}


# ----------------------------------------------------------------------------------------------------------------
# Configuration

@dataclass
class Config:
    # --- Run identity and files ---
    log_name: str | None = None            # run id naming the log, summary and checkpoint folder (None = time + random)
    log_dir: str = "logs"                  # directory of {run_id}.txt, .json and .png
    save_dir: str = "checkpoints"          # checkpoints go to {save_dir}/{run_id}/step_{step:06d}/
    resume_from: str | None = None         # checkpoint directory to resume from: model, optimiser, loader, RNG, clock
    seed: int = 42                         # seed of the initial weights and of the training stream (order and masks)
    bugfix: bool = False                   # tiny model and run for debugging (overrides model, batch and step keys)

    # --- Data ---
    data_dir: str = "data/demo"            # directory holding {data_name}_{train,valid,test}_NNNNNN.bin shards
    data_name: str = "demo"                # shard name prefix
    batch_size: int = 524288               # tokens per optimiser step, all ranks and micro-steps together
    grad_accum: int = 1                    # micro-steps per optimiser step (per rank)
    row_length: int = 16384                # tokens per packed row (a micro-batch is R rows of this length)
    max_length: int = 1024                 # tokens per sequence; a longer one is cropped to a random window
    num_workers: int = 4                   # loader worker processes per rank (0 = in the training process)
    prefetch_factor: int = 2               # micro-batches each worker prepares ahead

    # --- Masking ---
    mlm: bool = True                       # true: masked LM at mask_rate; false: masked diffusion (rate drawn per row)
    mask_rate: float = 0.2                 # fraction of residues masked in training (the end value of a warm-up)
    mask_rate_start: float | None = None   # mask rate at step 0 of a linear warm-up to mask_rate (None = no warm-up)
    mask_rate_warmup_steps: int = 0        # steps of the mask-rate warm-up
    bert_corruption: bool = False          # BERT/ESM2 80/10/10 (<mask>/random residue/unchanged) instead of all <mask>
    val_mask_rate: float = 0.15            # fraction of residues masked in the fixed validation and test masks
    val_mask_seed: int = 0                 # seed of those masks: fixed, so every run scores the same positions
    controls: bool = True                  # score the no-learning controls (controls.py) on the validation masks
    controls_max_train_tokens: int = 100_000_000  # train tokens the controls count, at most (one bounded pass)

    # --- Model ---
    architecture: str = "speedrun"         # "speedrun" (UNet, value embeddings, caps) or "esm2" (plain ESM2 blocks)
    hidden_size: int = 768                 # model width (channels)
    num_attention_heads: int = 6           # attention heads (head size = hidden_size / heads)
    num_hidden_layers: int = 24            # transformer blocks
    expansion_ratio: float = 8 / 3         # MLP width / hidden_size
    intermediate_multiple_of: int = 128    # MLP width rounded up to a multiple of this (tensor-core friendly)
    unet: bool = True                      # UNet skips from the first half of the blocks to the second
    x0_mix: bool = True                    # learned x = λ0·x + λ1·x0 mix with the embedding output in every block
    value_embeddings: int = 6              # value-embedding tables on the first k and last k blocks (0 = off)
    attention_soft_cap: float = 0.0        # attention-score cap·tanh(s/cap) (0 = off)
    soft_logit_cap: float = 32.0           # output-logit cap (0 = off)
    logit_cap_type: str = "tanh"           # "tanh": cap·tanh(z/cap); "sigmoid": the modded-nanogpt sigmoid form
    tie_embeddings: bool = False           # tie the head's decoder to the input embedding (required by esm2)
    token_dropout: bool = False            # ESM2 token dropout: zero <mask> embeddings, rescale by the mask ratio
    sliding_window: int = 0                # symmetric attention window in tokens (0 = whole sequence)
    rope_base: float = 10000.0             # rotary embedding base
    attention_backend: str = "auto"        # "auto" (flex on CUDA, sdpa on CPU), "flex" or "sdpa"

    # --- Optimiser ---
    recipe: str = "speedrun"               # "speedrun": Muon on hidden matrices + Adam; "esm2": AdamW on everything
    use_muon: bool | None = None           # prior-art key: false = the AdamW recipe ("esm2"), true = "speedrun"
    lr_hidden: float = 0.05                # Muon learning rate of the hidden matrices (speedrun recipe)
    lr_embed: float = 0.06                 # Adam learning rate of the token embedding
    lr_value_embed: float = 0.06           # Adam learning rate of the value embeddings
    lr_head: float = 0.008                 # Adam learning rate of the MLM head
    lr_scalar: float = 0.04                # Adam learning rate of scalars and vectors (ndim < 2)
    adam_betas: tuple[float, float] = (0.8, 0.95)  # Adam betas of the speedrun recipe
    adam_eps: float = 1e-10                # Adam eps of the speedrun recipe
    muon_momentum_start: float = 0.85      # Muon momentum at step 0
    muon_momentum_end: float = 0.95        # Muon momentum after muon_momentum_warmup_steps
    muon_momentum_warmup_steps: int = 300  # steps of the linear Muon-momentum warm-up
    ns_steps: int = 5                      # Newton–Schulz iterations per Muon update
    ns_coefficients: str = "quintic"       # "quintic" (3.4445, -4.7750, 2.0315) or "polar_express"
    muon_weight_decay: float = 0.0         # decoupled weight decay of the Muon matrices (multiplied by the LR)
    cautious_weight_decay: bool = False    # decay only where update and weight agree in sign (arXiv 2510.12402)
    lr: float = 4e-4                       # peak AdamW learning rate of the esm2 recipe
    esm2_betas: tuple[float, float] = (0.9, 0.98)  # AdamW betas of the esm2 recipe
    esm2_eps: float = 1e-8                 # AdamW eps of the esm2 recipe
    esm2_weight_decay: float = 0.01        # AdamW weight decay of the esm2 recipe
    grad_clip: float = 0.0                 # global gradient-norm clip (0 = off)

    # --- Length of the run and LR schedule ---
    num_steps: int = 10000                 # optimiser steps (the run stops earlier at the time budget or target)
    max_train_time_hours: float | None = None  # training-clock budget in hours (schedule: whichever limit ends first)
    scheduler_type: str = "trapezoid"      # "trapezoid", "cosine", "linear" or "constant" (after the warm-up)
    lr_warmup_steps: int = 0               # steps of linear LR warm-up
    cooldown_frac: float = 0.4             # trapezoid: final fraction of the run spent cooling down
    cooldown_steps: int | None = None      # trapezoid, prior-art key: cooldown length in steps (sets cooldown_frac)
    lr_floor: float = 0.1                  # LR at the end of the decay, as a fraction of the peak

    # --- Validation, stopping, checkpoints, logging ---
    eval_every: int = 250                  # steps between validations (also at step 0 and at the end; 0 = end only)
    target_loss: float = 2.1               # validation loss per masked token that defines "time to target"
    stop_at_target: bool = False           # stop at the first validation with loss <= target_loss
    save_every: int = 0                    # steps between checkpoints (0 = only at the end)
    log_every: int = 10                    # steps between log lines
    untimed_warmup_steps: int = 3          # real steps run (and undone) before the clock starts, to compile
    compile_model: bool | None = None      # torch.compile the model (None = on with CUDA, off on CPU)

    # --- Integrations (optional, offline-safe) ---
    wandb: bool = False                    # mirror the log to Weights & Biases (offline mode without WANDB_API_KEY)
    wandb_project: str = "plm-speedrun"    # wandb project name
    push_to_hub: bool = False              # push the final model to the Hugging Face Hub (needs HF_TOKEN, hub_repo_id)
    hub_repo_id: str | None = None         # Hub repository, e.g. "your-name/plm-speedrun-run1" (no default on purpose)


# What `bugfix: true` sets, as in the prior art: a tiny model and a run of seconds.
BUGFIX = dict(hidden_size=128, num_attention_heads=2, num_hidden_layers=2, value_embeddings=1, batch_size=2048,
              grad_accum=1, row_length=512, max_length=512, num_steps=10, eval_every=5, lr_warmup_steps=0,
              muon_momentum_warmup_steps=0, untimed_warmup_steps=1, log_every=1)
CHOICES = dict(architecture=("speedrun", "esm2"), recipe=("speedrun", "esm2"), logit_cap_type=("tanh", "sigmoid"),
               attention_backend=("auto", "flex", "sdpa"), ns_coefficients=("quintic", "polar_express"),
               scheduler_type=("trapezoid", "cosine", "linear", "constant"))
# Keys that may differ between a checkpoint's run and the run resuming it: they change bookkeeping, not the numbers.
RESUMABLE_CHANGES = {"log_name", "log_dir", "save_dir", "resume_from", "eval_every", "save_every", "log_every",
                     "num_workers", "prefetch_factor", "grad_accum", "compile_model", "untimed_warmup_steps",
                     "stop_at_target", "wandb", "wandb_project", "push_to_hub", "hub_repo_id"}


class ConfigError(ValueError):
    """A wrong key, value or combination: the run stops before any work, with a message naming the key."""


def model_config(cfg: Config) -> ModelConfig:
    """The model's hyperparameters, passed by name (model.py never sees Config)."""
    return ModelConfig(vocab_size=VOCAB_SIZE, hidden_size=cfg.hidden_size, num_attention_heads=cfg.num_attention_heads,
                       num_hidden_layers=cfg.num_hidden_layers, expansion_ratio=cfg.expansion_ratio,
                       intermediate_multiple_of=cfg.intermediate_multiple_of, architecture=cfg.architecture,
                       unet=cfg.unet, x0_mix=cfg.x0_mix, value_embeddings=cfg.value_embeddings,
                       attention_soft_cap=cfg.attention_soft_cap, soft_logit_cap=cfg.soft_logit_cap,
                       logit_cap_type=cfg.logit_cap_type, tie_embeddings=cfg.tie_embeddings,
                       token_dropout=cfg.token_dropout, sliding_window=cfg.sliding_window, rope_base=cfg.rope_base,
                       attention_backend=cfg.attention_backend)


def _convert(key: str, value, kind):
    """A YAML or command-line value -> the type of field `key`, or a ConfigError naming the key."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null", "~", "")):
            return None
        (kind,) = [a for a in args if a is not type(None)]
        return _convert(key, value, kind)
    if origin is tuple:
        items = [v for v in value.replace("(", "").replace(")", "").replace("[", "").replace("]", "").split(",")
                 if v.strip()] if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)) or len(items) != len(args):
            raise ConfigError(f"{key}: expected {len(args)} comma-separated values, got {value!r}")
        return tuple(_convert(key, v, a) for v, a in zip(items, args))
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "1", "yes", "on"):
            return True
        if isinstance(value, str) and value.strip().lower() in ("false", "0", "no", "off"):
            return False
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if kind is int:
        if isinstance(value, bool) or isinstance(value, float) and not value.is_integer():
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        try:
            return int(float(value)) if isinstance(value, str) and "e" in value.lower() else int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected an integer, got {value!r}") from None
    if kind is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
    if kind is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise TypeError(f"Config field {key} has unsupported type {kind}")


def _check_key(key: str, field_types: dict, source: str) -> None:
    if key.lower() in SECRET_KEYS:
        raise ConfigError(f"{source}: '{key}' is refused: secrets never go in a YAML file or on the command line "
                          f"(they would land in logs, shell history and `ps`). Set the environment variable "
                          f"{SECRET_KEYS[key.lower()]} instead.")
    if key not in field_types:
        close = difflib.get_close_matches(key, list(field_types), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(f"{source}: unknown config key '{key}'{hint}")


def parse_config(argv: list[str]) -> tuple[Config, set[str]]:
    """Defaults, then `--yaml_path FILE`, then `--key value` / `--key=value` arguments -> (Config, keys set).

    Strict: an unknown key (with the closest known key suggested), a value of the wrong type, a token passed as a
    key, or an impossible combination raises ConfigError naming the key.
    """
    field_types = typing.get_type_hints(Config)
    cli: list[tuple[str, object]] = []
    yaml_path = None
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--") or arg == "--":
            raise ConfigError(f"command line: expected --key value, got {arg!r}")
        key, has_value, value = arg[2:].partition("=")
        key = key.replace("-", "_")
        if not has_value:
            if i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                value, i = argv[i + 1], i + 1
            elif field_types.get(key) is bool:
                value = "true"  # a bare `--bugfix` means true
            elif key != "yaml_path" and key not in field_types:
                value = None
            else:
                raise ConfigError(f"command line: --{key} needs a value")
        i += 1
        if key == "yaml_path":
            yaml_path = value
            continue
        _check_key(key, field_types, "command line")
        cli.append((key, value))

    values: dict[str, object] = {}
    if yaml_path is not None:
        path = Path(yaml_path)
        if not path.is_file():
            raise ConfigError(f"--yaml_path: no such file {path}")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of config keys, got {type(loaded).__name__}")
        for key, value in loaded.items():
            _check_key(str(key), field_types, str(path))
            values[key] = _convert(f"{path}: {key}", value, field_types[key])
    for key, value in cli:
        values[key] = _convert(f"--{key}", value, field_types[key])
    cfg = Config(**values)
    if cfg.bugfix:
        cfg = dataclasses.replace(cfg, **BUGFIX)
    cfg = _resolve_aliases(cfg, set(values))
    check_config(cfg)
    return cfg, set(values)


def _resolve_aliases(cfg: Config, given: set[str]) -> Config:
    """Prior-art keys that are another spelling of ours: use_muon (-> recipe), cooldown_steps (-> cooldown_frac)."""
    if cfg.use_muon is not None:
        recipe = "speedrun" if cfg.use_muon else "esm2"
        if "recipe" in given and cfg.recipe != recipe:
            raise ConfigError(f"use_muon: {cfg.use_muon} contradicts recipe: {cfg.recipe} (set only one of them)")
        cfg = dataclasses.replace(cfg, recipe=recipe)
    if cfg.cooldown_steps is not None:
        if "cooldown_frac" in given:
            raise ConfigError("cooldown_steps and cooldown_frac both set: set only one of them")
        if cfg.max_train_time_hours is not None:
            raise ConfigError("cooldown_steps: a time-budgeted run (max_train_time_hours) needs cooldown_frac")
        if not 0 <= cfg.cooldown_steps <= cfg.num_steps:
            raise ConfigError(f"cooldown_steps: {cfg.cooldown_steps} must be within 0..num_steps ({cfg.num_steps})")
        cfg = dataclasses.replace(cfg, cooldown_frac=cfg.cooldown_steps / max(cfg.num_steps, 1))
    return cfg


def check_config(cfg: Config) -> None:
    """Values and combinations that cannot work, each reported with its key (no rank-dependent checks here)."""
    for key, allowed in CHOICES.items():
        if getattr(cfg, key) not in allowed:
            raise ConfigError(f"{key}: {getattr(cfg, key)!r} is not one of {', '.join(allowed)}")
    for key in ("batch_size", "grad_accum", "row_length", "max_length", "hidden_size", "num_attention_heads",
                "num_hidden_layers", "ns_steps", "intermediate_multiple_of"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"{key}: must be >= 1, got {getattr(cfg, key)}")
    for key in ("num_steps", "num_workers", "eval_every", "sliding_window", "save_every", "lr_warmup_steps", "mask_rate_warmup_steps",
                "muon_momentum_warmup_steps", "untimed_warmup_steps", "value_embeddings"):
        if getattr(cfg, key) < 0:
            raise ConfigError(f"{key}: must be >= 0, got {getattr(cfg, key)}")
    if cfg.log_every < 1:
        raise ConfigError(f"log_every: must be >= 1, got {cfg.log_every}")
    if cfg.num_workers > 0 and cfg.prefetch_factor < 1:
        raise ConfigError(f"prefetch_factor: must be >= 1 with workers, got {cfg.prefetch_factor}")
    if cfg.hidden_size % cfg.num_attention_heads:
        raise ConfigError(f"hidden_size: {cfg.hidden_size} is not divisible by num_attention_heads "
                          f"({cfg.num_attention_heads})")
    if cfg.batch_size % cfg.row_length:
        raise ConfigError(f"batch_size: {cfg.batch_size} tokens is not a whole number of rows of row_length "
                          f"{cfg.row_length}")
    if cfg.max_length > cfg.row_length:
        raise ConfigError(f"max_length: {cfg.max_length} exceeds row_length {cfg.row_length} (a sequence must fit a row)")
    for key in ("mask_rate", "val_mask_rate"):
        if not 0 < getattr(cfg, key) <= 1:
            raise ConfigError(f"{key}: must be in (0, 1], got {getattr(cfg, key)}")
    if cfg.mask_rate_start is not None and not 0 < cfg.mask_rate_start <= 1:
        raise ConfigError(f"mask_rate_start: must be in (0, 1], got {cfg.mask_rate_start}")
    if (cfg.mask_rate_start is None) != (cfg.mask_rate_warmup_steps == 0):
        raise ConfigError("mask_rate_start and mask_rate_warmup_steps: set both (a warm-up) or neither")
    if not 0 <= cfg.cooldown_frac <= 1:
        raise ConfigError(f"cooldown_frac: must be in [0, 1], got {cfg.cooldown_frac}")
    if not 0 <= cfg.lr_floor <= 1:
        raise ConfigError(f"lr_floor: must be in [0, 1], got {cfg.lr_floor}")
    if cfg.grad_clip < 0:
        raise ConfigError(f"grad_clip: must be >= 0, got {cfg.grad_clip}")
    if cfg.max_train_time_hours is not None and cfg.max_train_time_hours <= 0:
        raise ConfigError(f"max_train_time_hours: must be > 0, got {cfg.max_train_time_hours}")
    if cfg.bert_corruption and not cfg.mlm:
        raise ConfigError("bert_corruption: masked diffusion (mlm: false) uses <mask> as its only corruption")
    if cfg.cautious_weight_decay and cfg.muon_weight_decay == 0:
        raise ConfigError("cautious_weight_decay: has no effect with muon_weight_decay: 0")
    if cfg.scheduler_type == "trapezoid" and cfg.cooldown_frac == 0:
        raise ConfigError("cooldown_frac: the trapezoid schedule needs a cooldown > 0")
    try:
        model_config(cfg)
    except ValueError as e:  # ModelConfig names the field, which has the same name here
        raise ConfigError(str(e)) from None
    if cfg.push_to_hub and not cfg.hub_repo_id:
        raise ConfigError("push_to_hub: true needs hub_repo_id (e.g. your-name/plm-speedrun-run1)")
    if cfg.log_name is not None and (not cfg.log_name or "/" in cfg.log_name or cfg.log_name.startswith(".")):
        raise ConfigError(f"log_name: {cfg.log_name!r} must be a plain file name")


# ----------------------------------------------------------------------------------------------------------------
# Helpers that name a computation

class Clock:
    """Training time in seconds. Runs during training steps (data included); stopped for validation, checkpoints
    and the untimed warm-up. On CUDA, `stop()` synchronises first so queued GPU work is counted."""

    def __init__(self, device: torch.device, elapsed: float = 0.0):
        self.device, self.elapsed, self._t0 = device, elapsed, None

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def start(self):
        self._sync()
        self._t0 = time.perf_counter()

    def stop(self):
        self._sync()
        self.elapsed += time.perf_counter() - self._t0
        self._t0 = None

    @property
    def running(self) -> bool:
        return self._t0 is not None

    def read(self) -> float:
        """Elapsed time without synchronising (for schedules; at most the queued GPU work behind)."""
        return self.elapsed + (time.perf_counter() - self._t0 if self._t0 is not None else 0.0)


class RunRecord:
    """Rank 0's text log: each line goes to stdout and to {log_dir}/{run_id}.txt, with secret values redacted."""

    def __init__(self, path: Path | None, secrets: list[str], append: bool = False):
        self.path, self.secrets = path, [s for s in secrets if s]
        self.echo = self.print  # replaced by the progress bar's writer while it is on screen
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            if not append:
                path.write_text("")

    @staticmethod
    def print(text: str):
        print(text, flush=True)

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "<redacted>")
        return text

    def write(self, text: str, echo: bool = True):
        if self.path is None:
            return
        text = self.redact(text)
        with open(self.path, "a") as f:
            f.write(text + "\n")
        if echo:
            self.echo(text)


class Wandb:
    """Optional wandb mirror: imported only when enabled; offline without WANDB_API_KEY; any failure is logged as one
    line and turns it off, never stopping the run."""

    def __init__(self, cfg: Config, run_id: str, config_dict: dict, has_key: bool, record: RunRecord):
        self.record, self.run = record, None
        if not cfg.wandb:
            return
        try:
            import wandb
            self.run = wandb.init(project=cfg.wandb_project, name=run_id, id=run_id, config=config_dict,
                                  dir=cfg.log_dir, mode="online" if has_key else "offline", resume="allow")
            record.write(f"wandb: logging to project {cfg.wandb_project} ({'online' if has_key else 'offline'})")
        except Exception as e:  # noqa: BLE001 - an optional mirror must never stop training
            self._fail("init", e)

    def _fail(self, what: str, e: Exception):
        self.record.write(f"wandb: {what} failed ({type(e).__name__}: {e}); continuing without wandb")
        self.run = None

    def log(self, values: dict, step: int):
        if self.run is not None:
            try:
                self.run.log(values, step=step)
            except Exception as e:  # noqa: BLE001
                self._fail("log", e)

    def finish(self, summary: dict):
        if self.run is not None:
            try:
                self.run.summary.update({k: v for k, v in summary.items() if isinstance(v, (int, float, str))})
                self.run.finish()
            except Exception as e:  # noqa: BLE001
                self._fail("finish", e)


# bf16 dense tensor-core peak FLOP/s per GPU from the vendors' datasheets, for MFU; unknown hardware logs "n/a".
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "GH200": 989e12, "B200": 2250e12, "A100": 312e12, "L40S": 362e12,
              "RTX 4090": 165e12, "A10G": 70e12}


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    matches = [flops for key, flops in PEAK_FLOPS.items() if key in name]
    return max(matches) if matches else None


def environment_report(device: torch.device, world_size: int) -> str:
    """Git commit and dirty flag, versions, hardware and world size: the header of the text log."""
    def run(cmd):
        try:
            return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    commit = run(["git", "rev-parse", "HEAD"]) or "unknown (not a git checkout)"
    dirty = bool(run(["git", "status", "--porcelain", "--untracked-files=no"]))
    lines = [f"git commit: {commit}{' (dirty: uncommitted changes)' if dirty else ''}",
             f"python: {sys.version.split()[0]}  torch: {torch.__version__}  numpy: {np.__version__}  "
             f"cuda: {torch.version.cuda}  cudnn: {torch.backends.cudnn.version() if device.type == 'cuda' else None}",
             f"platform: {platform.platform()}  cpu: {platform.processor() or platform.machine()} "
             f"x{os.cpu_count()}  torch threads: {torch.get_num_threads()}",
             f"device: {device}  world size: {world_size}"]
    if device.type == "cuda":
        lines.append("gpus: " + ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())))
        lines.append(run(["nvidia-smi"]))
    return "\n".join(lines)


def git_state() -> dict:
    def run(cmd):
        try:
            return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    return {"commit": run(["git", "rev-parse", "HEAD"]) or None,
            "dirty": bool(run(["git", "status", "--porcelain", "--untracked-files=no"]))}


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def attended_length(batches: list[dict]) -> float:
    """Token-weighted mean sequence length Σ L² / Σ L of packed rows (what attention costs per token), for FLOPs."""
    lengths = np.concatenate([np.unique(row[row >= 0], return_counts=True)[1]
                              for batch in batches for row in batch["seq_ids"].numpy()] or [np.ones(1)])
    return float((lengths.astype(np.float64) ** 2).sum() / lengths.sum())


def plot_losses(path: Path, train_log: list[dict], val_log: list[dict], target: float, run_id: str,
                control_losses: dict | None = None) -> None:
    """Train and validation loss against the training clock, zoomed on the learning: the y-axis spans the
    validation curve and the controls (the first steps near ln(33) are cut off), the controls drawn as lines."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    minutes = lambda log: [e["train_time_s"] / 60 for e in log]  # noqa: E731
    if train_log:
        ax.plot(minutes(train_log), [e["loss"] for e in train_log], lw=1, alpha=0.6, label="train (batch)")
    if val_log:
        ax.plot(minutes(val_log), [e["loss"] for e in val_log], "o-", lw=2, label="validation")
    levels = [e["loss"] for e in val_log[1:] or val_log]
    if control_losses:
        for (name, style) in zip(controls.NAMES, (":", "-.", "--", "-")):
            ax.axhline(control_losses[name], color="gray", ls=style, lw=1, label=f"control: {name}")
        levels += [control_losses[name] for name in controls.NAMES]
    if target >= min(levels or [target]) - 0.3:
        ax.axhline(target, color="k", ls="--", lw=1, label=f"target {target}")
        levels.append(target)
    if levels:
        span = max(levels) - min(levels)
        ax.set_ylim(min(levels) - 0.1 * span - 0.01, max(levels) + 0.25 * span + 0.01)
    ax.set_xlabel("training clock (minutes; validation and checkpoints excluded)")
    ax.set_ylabel("loss per masked token (nats)")
    gain = val_log[-1].get("gain") if val_log else None
    ax.set_title(run_id + (f": final gain {gain:+.3f} nats below the best control" if gain is not None else ""))
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def push_to_hub(checkpoint_dir: Path, repo_id: str, token: str, summary_path: Path, record: RunRecord) -> bool:
    """Upload the final checkpoint as export.py writes it (a folder that loads with transformers, its model card read
    from the run's JSON summary). A failure is logged, never fatal: the checkpoint stays on disk."""
    try:
        import tempfile
        import export  # export.py and transformers load only in runs that push
        with tempfile.TemporaryDirectory() as tmp:
            folder, notes = export.export_checkpoint(checkpoint_dir, Path(tmp) / "export", run_json=summary_path)
            for note in notes:
                record.write(f"hub: {note}")
            url = export.push_folder(folder, repo_id, token, f"plm-speedrun: {checkpoint_dir.name}")
        record.write(f"hub: pushed {checkpoint_dir} to {url} (loads with transformers; see docs/EXPORT.md)")
        return True
    except Exception as e:  # noqa: BLE001 - the model is safe on disk; a failed upload must not fail the run
        record.write(f"hub: push to {repo_id} failed ({type(e).__name__}: {e}); the model stays in {checkpoint_dir}")
        return False


# ----------------------------------------------------------------------------------------------------------------

DIST_TIMEOUT = datetime.timedelta(minutes=30)  # init_process_group: longer than any rank's compile


def compile_and_wrap(raw_model: PLM, device: torch.device, compile_model: bool, distributed: bool):
    """-> (model for training steps, logits function for evaluation), compiled and DDP-wrapped as asked.

    fullgraph=True on the FlexAttention path, so a graph break fails loudly instead of silently splitting the
    model; the SDPA path runs its per-bucket kernels eagerly (torch.compiler.disable), so it cannot be one graph.
    DDP wraps the compiled module. Its first forward runs inside DDP, where torch.compile's DDPOptimizer splits the
    graph at DDP's bucket boundaries: each bucket's all-reduce starts while the backward of earlier layers runs.
    docs/TRAINING.md ("Gradient communication") weighs this against the alternatives in bytes and overlap;
    tests/test_gpu_path.py checks the split and that two ranks equal one process.
    """
    fullgraph = raw_model.attention_backend(device) == "flex"
    model, logits_fn = raw_model, raw_model.logits
    if compile_model:
        model = torch.compile(raw_model, dynamic=False, fullgraph=fullgraph)
        logits_fn = torch.compile(raw_model.logits, dynamic=False, fullgraph=fullgraph)
    if distributed:
        model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None,
                    gradient_as_bucket_view=True)
    return model, logits_fn


def main(argv: list[str]) -> dict:
    # ---- Setup: configuration, distributed, seeds, run record ----------------------------------------------------
    run_start = provenance.start()  # load average and clocks before any work, for the record
    cfg, given = parse_config(argv)
    secrets = {name: os.environ.get(name) for name in SECRET_ENV}
    if cfg.push_to_hub and not secrets["HF_TOKEN"]:
        raise ConfigError("push_to_hub: true needs the environment variable HF_TOKEN (a write token)")
    resume_state = None
    if cfg.resume_from is not None:
        resume_state = checkpoint.load_train_state(cfg.resume_from)
        changed = sorted(k for k, v in resume_state["config"].items()
                         if k not in RESUMABLE_CHANGES and v != json.loads(json.dumps(getattr(cfg, k, None))))
        if changed:
            raise ConfigError(f"resume_from: the config differs from the checkpoint's in {changed}; an exact resume "
                              "needs the same values (pass the run's YAML again)")

    for split in ("train", "valid"):  # missing or corrupt data stops the run here, naming the file, before any work
        dataloader.check_shards(find_shards(cfg.data_dir, cfg.data_name, split))

    distributed = "RANK" in os.environ and "WORLD_SIZE" in os.environ  # launched by torchrun
    rank = int(os.environ["RANK"]) if distributed else 0
    world_size = int(os.environ["WORLD_SIZE"]) if distributed else 1
    local_rank = int(os.environ.get("LOCAL_RANK", 0)) if distributed else 0
    device = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cuda":
        # Before CUDA's allocator starts: grow segments instead of caching fixed blocks, so fragmentation cannot
        # strand memory (modded-nanogpt does the same); the user's own setting wins.
        if "PYTORCH_CUDA_ALLOC_CONF" not in os.environ and "PYTORCH_ALLOC_CONF" not in os.environ:
            os.environ["PYTORCH_CUDA_ALLOC_CONF"] = "expandable_segments:True"
        torch.cuda.set_device(device)
        torch.set_float32_matmul_precision("high")  # TF32 for the few fp32 matmuls outside bf16 autocast
    if distributed:
        # Ranks wait in their first collective while others still compile (minutes for the default model);
        # the timeout must cover that, not NCCL's 10-minute default.
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=DIST_TIMEOUT,
                                device_id=device if device.type == "cuda" else None)
    # Host-side scalars (clock, signals, token counts) go through gloo so they never synchronise the GPU stream.
    host_group = dist.new_group(backend="gloo") if distributed and device.type == "cuda" else None
    master = rank == 0

    # Derived values, computed once: rows per micro-batch and per step.
    rows_per_step = cfg.batch_size // cfg.row_length
    if rows_per_step % (world_size * cfg.grad_accum):
        raise ConfigError(f"batch_size: {cfg.batch_size} tokens = {rows_per_step} rows of {cfg.row_length} do not "
                          f"split evenly over world size {world_size} × grad_accum {cfg.grad_accum}")
    rows_per_micro = rows_per_step // (world_size * cfg.grad_accum)
    compile_model = cfg.compile_model if cfg.compile_model is not None else device.type == "cuda"
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext())
    budget_s = cfg.max_train_time_hours * 3600 if cfg.max_train_time_hours is not None else None

    if resume_state is not None and cfg.log_name is None:
        run_id = f"{resume_state['run_id']}-resumed-{resume_state['step']:06d}"
    else:
        run_id = cfg.log_name or datetime.datetime.now().strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
    if distributed:  # every rank must use rank 0's id (its clock and random suffix)
        box = [run_id]
        dist.broadcast_object_list(box, src=0)
        run_id = box[0]
    log_dir, run_dir = Path(cfg.log_dir), Path(cfg.save_dir) / run_id
    # A run resumed under its own id continues its text log; any other run starts a new one.
    record = RunRecord(log_dir / f"{run_id}.txt" if master else None, list(secrets.values()),
                       append=resume_state is not None and resume_state["run_id"] == run_id)
    config_dict = dataclasses.asdict(cfg)
    git = git_state()
    sources = {name: (ROOT / name).read_text() for name in CORE_FILES}
    record.write(provenance.code_sections(sources), echo=False)
    record.write(f"{provenance.CONFIG_HEADER}\n"
                 + yaml.safe_dump(json.loads(json.dumps(config_dict)), sort_keys=False).rstrip(), echo=False)
    record.write(f"run id: {run_id}\nkeys set by YAML/CLI: {sorted(given)}"
                 + (f"\nbugfix: true set {BUGFIX}" if cfg.bugfix else "") + "\n" + environment_report(device, world_size))
    prov = provenance.RunProvenance(sources, cfg.data_dir, cfg.data_name, device, world_size, run_start,
                                    hash_data=master)  # code and shard hashes, hardware: what records.py checks
    record.write(prov.header())
    record.write(f"derived: {rows_per_step} rows of {cfg.row_length} tokens per step = {rows_per_micro} rows per "
                 f"micro-batch × {cfg.grad_accum} micro-steps × {world_size} ranks; compile: {compile_model}; "
                 f"precision: {'bf16 autocast' if device.type == 'cuda' else 'fp32'}; time budget: "
                 f"{f'{budget_s:.0f} s' if budget_s else 'none'}")
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)

    # ---- Build: data, then model, then optimiser ------------------------------------------------------------------
    masking = dataloader.MaskingConfig(mask_rate=cfg.mask_rate, mask_rate_start=cfg.mask_rate_start,
                                       mask_rate_warmup_steps=cfg.mask_rate_warmup_steps,
                                       bert_corruption=cfg.bert_corruption, masked_diffusion=not cfg.mlm)

    def make_loader() -> dataloader.TrainLoader:
        return dataloader.TrainLoader(cfg.data_dir, cfg.data_name, batch_size=cfg.batch_size,
                                      row_length=cfg.row_length, max_length=cfg.max_length,
                                      grad_accum=cfg.grad_accum, world_size=world_size, rank=rank, seed=cfg.seed,
                                      masking=masking, num_workers=cfg.num_workers,
                                      prefetch_factor=cfg.prefetch_factor, pin_memory=device.type == "cuda")

    def load_eval_split(split: str) -> list[dict]:
        """The fixed-mask rows of a split, in batches shaped like a training micro-batch (this rank's share)."""
        return validation.load_validation_batches(cfg.data_dir, cfg.data_name, split, row_length=cfg.row_length,
                                                  max_length=cfg.max_length, mask_rate=cfg.val_mask_rate,
                                                  seed=cfg.val_mask_seed, world_size=world_size, rank=rank,
                                                  rows_per_batch=rows_per_micro)

    loader = make_loader()
    val_batches = load_eval_split("valid")
    has_test = any(Path(cfg.data_dir).glob(f"{cfg.data_name}_test_*.bin"))
    record.write(f"data: {cfg.data_dir}/{cfg.data_name}: {loader.shard_tokens:,} training tokens in "
                 f"{len(loader.layout.paths)} shards; validation {val_batches.stats}; test split: "
                 f"{'yes' if has_test else 'none'}")
    # The no-learning controls on exactly these masked positions, once, before the clock starts: every validation
    # loss is reported with its gain below the best of them.
    control_losses = None
    if cfg.controls:
        t_controls = time.perf_counter()
        control_model = controls.fit_controls(find_shards(cfg.data_dir, cfg.data_name, "train"), cfg.val_mask_rate,
                                              cfg.controls_max_train_tokens)
        sums = control_model.score(controls.rows_to_sequences(val_batches))
        if distributed:  # each rank scored its own rows
            keys = sorted(sums)
            total = torch.tensor([float(sums[k]) for k in keys], dtype=torch.float64)
            dist.all_reduce(total, group=host_group)
            sums = {k: (int(v) if k == "masked_tokens" else v) for k, v in zip(keys, total.tolist())}
        control_losses = controls.summarise(sums)
        record.write(controls.describe(control_losses, control_model)
                     + f"; {time.perf_counter() - t_controls:.1f} s, outside the clock")

    raw_model = PLM(model_config(cfg))
    raw_model.init_weights()
    raw_model.to(device)
    n_params, n_params_non_embedding = raw_model.num_parameters(), raw_model.num_parameters(non_embedding=True)
    seq_len = attended_length(val_batches)
    flops_per_token = raw_model.flops_per_token(seq_len)
    record.write(f"model: {n_params:,} parameters ({n_params_non_embedding:,} non-embedding); "
                 f"{flops_per_token / 1e6:.1f} MFLOP per training token (attended length {seq_len:.0f})\n"
                 f"model config: {json.dumps(dataclasses.asdict(raw_model.config))}")

    optimizers = optim.build_optimizers(
        raw_model.parameter_groups(), recipe=cfg.recipe, all_params=raw_model.parameters(), lr_hidden=cfg.lr_hidden, lr_embed=cfg.lr_embed,
        lr_value_embed=cfg.lr_value_embed, lr_head=cfg.lr_head, lr_scalar=cfg.lr_scalar, adam_betas=cfg.adam_betas,
        adam_eps=cfg.adam_eps, muon_momentum=cfg.muon_momentum_end, ns_steps=cfg.ns_steps,
        ns_coefficients=cfg.ns_coefficients, muon_weight_decay=cfg.muon_weight_decay,
        cautious_weight_decay=cfg.cautious_weight_decay, lr=cfg.lr, esm2_betas=cfg.esm2_betas, esm2_eps=cfg.esm2_eps,
        esm2_weight_decay=cfg.esm2_weight_decay, fused=True if device.type == "cuda" else None)
    peak_lr = cfg.lr_hidden if cfg.recipe == "speedrun" else cfg.lr

    # ---- Compile, then an untimed warm-up that is undone ----------------------------------------------------------
    model, logits_fn = compile_and_wrap(raw_model, device, compile_model, distributed)

    def sum_over_ranks(values: list[float]) -> list[float]:
        """Host-side sum of small numbers over ranks (no GPU synchronisation)."""
        if not distributed:
            return values
        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t, group=host_group)
        return t.tolist()

    def train_step(step: int, lr_mult: float, momentum: float) -> tuple[torch.Tensor, int, int]:
        """One optimiser step over grad_accum micro-batches -> (this rank's loss sum, global masked, global tokens).

        The loss is normalised by the GLOBAL count of masked tokens: each micro-step's loss sum is scaled by
        world_size / global_count, so DDP's gradient average gives sum(loss) / global_count.
        """
        micro_batches = []
        for micro in range(cfg.grad_accum):
            got_step, got_micro, batch = next(train_iter)
            assert (got_step, got_micro) == (step, micro), f"loader gave {(got_step, got_micro)}, expected {(step, micro)}"
            micro_batches.append(batch)
        masked, tokens = sum_over_ranks([float(sum(int((b["labels"] != -100).sum()) for b in micro_batches)),
                                         float(sum(int((b["seq_ids"] >= 0).sum()) for b in micro_batches))])
        scale = world_size / max(masked, 1.0)
        loss_sum = torch.zeros((), device=device)
        for micro, batch in enumerate(micro_batches):
            batch = dataloader.to_device(batch, device)
            sync = not distributed or micro == cfg.grad_accum - 1
            with contextlib.nullcontext() if sync else model.no_sync():
                with autocast:
                    micro_loss, _ = model(batch["input_ids"], batch["seq_ids"], batch["labels"])
                (micro_loss * scale).backward()
            loss_sum += micro_loss.detach().float()
        optim.apply_schedule(optimizers, lr_mult, momentum)
        if cfg.grad_clip > 0:
            optim.clip_grad_norm(raw_model.parameters(), cfg.grad_clip)
        for opt in optimizers:
            opt.step()
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        return loss_sum, int(masked), int(tokens)

    def schedule(step: int, progress: float) -> tuple[float, float]:
        lr_mult = optim.lr_multiplier(step, progress, warmup_steps=cfg.lr_warmup_steps, schedule=cfg.scheduler_type,
                                      cooldown_frac=cfg.cooldown_frac, floor=cfg.lr_floor)
        momentum = optim.muon_momentum_at(step, cfg.muon_momentum_warmup_steps, cfg.muon_momentum_start,
                                          cfg.muon_momentum_end) if cfg.recipe == "speedrun" else None
        return lr_mult, momentum

    if cfg.untimed_warmup_steps:
        t_warm = time.perf_counter()
        initial = {"model": copy.deepcopy(raw_model.state_dict()),
                   "optimizers": [copy.deepcopy(opt.state_dict()) for opt in optimizers], "rng": rng_state()}
        train_iter = iter(loader)
        for warm_step in range(cfg.untimed_warmup_steps):
            train_step(warm_step, *schedule(warm_step, warm_step / max(cfg.num_steps, 1)))
        model.eval()
        for batch in (val_batches[:1] + val_batches[-1:]):  # both batch shapes, so validation compiles here too
            validation.mlm_metrics(logits_fn, [batch], device, autocast)
        model.train()
        raw_model.load_state_dict(initial["model"])
        for opt, state in zip(optimizers, initial["optimizers"]):
            opt.load_state_dict(state)
        set_rng_state(initial["rng"])
        del initial, train_iter
        loader = make_loader()  # a fresh loader at step 0: its position and its statistics restart
        record.write(f"untimed warm-up: {cfg.untimed_warmup_steps} steps + validation shapes in "
                     f"{time.perf_counter() - t_warm:.1f} s, then model, optimiser, loader and RNG restored")

    # ---- State of the run (fresh, or restored from a checkpoint) --------------------------------------------------
    step, tokens_seen, train_log, val_log, checkpoints = 0, 0, [], [], []
    target_reached = None  # {"train_time_s", "step", "tokens"} at the first validation <= target_loss
    clock = Clock(device)
    if resume_state is not None:
        raw_model.load_state_dict(checkpoint.load_model(cfg.resume_from).state_dict())
        for opt, state in zip(optimizers, resume_state["optimizers"]):
            opt.load_state_dict(state)
        loader.load_state_dict(resume_state["loader"])
        set_rng_state(resume_state["rng"])
        step, tokens_seen, clock.elapsed = resume_state["step"], resume_state["tokens"], resume_state["train_time_s"]
        train_log, val_log = resume_state["train_log"], resume_state["val_log"]
        checkpoints, target_reached = resume_state["checkpoints"], resume_state["target_reached"]
        record.write(f"resumed from {cfg.resume_from}: step {step}, {tokens_seen:,} tokens, "
                     f"train time {clock.elapsed:.1f} s")
    train_iter = iter(loader)

    status, message = "running", None
    stop_signal = {"signum": None}

    def on_signal(signum, _frame):  # finish the current step, then checkpoint and stop
        stop_signal["signum"] = signum

    previous_handlers = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    wandb_run = Wandb(cfg, run_id, config_dict, bool(secrets["WANDB_API_KEY"]), record) if master else None
    summary_path, plot_path = log_dir / f"{run_id}.json", log_dir / f"{run_id}.png"

    def summary() -> dict:
        peak_mem = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
        return {"run_id": run_id, "status": status, "message": message, "signal": stop_signal["signum"],
                "config": config_dict,
                "n_params": n_params, "n_params_non_embedding": n_params_non_embedding, "world_size": world_size,
                "device": str(device), "hardware": torch.cuda.get_device_name(device) if device.type == "cuda"
                else platform.processor() or platform.machine(),
                "steps": step, "tokens": tokens_seen, "train_time_s": clock.read(),
                "tokens_per_s": tokens_seen / clock.read() if clock.read() > 0 else None,
                "target_loss": cfg.target_loss,
                "time_to_target_s": target_reached["train_time_s"] if target_reached else None,
                "step_to_target": target_reached["step"] if target_reached else None,
                "tokens_to_target": target_reached["tokens"] if target_reached else None,
                "val": val_log, "final_val_loss": val_log[-1]["loss"] if val_log else None, "test": test_result,
                "controls": control_losses, "final_gain": val_log[-1]["gain"] if val_log else None,
                "train": train_log, "checkpoints": checkpoints, "resumed_from": cfg.resume_from,
                "peak_memory_bytes": peak_mem, "loader": loader.stats(), "git": git,
                "versions": {"python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.version.cuda},
                "provenance": prov.summary(val_mask_rate=cfg.val_mask_rate, val_mask_seed=cfg.val_mask_seed,
                                           val_stats=val_batches.stats, checkpoints=checkpoints)}

    def write_summary() -> dict:
        written = provenance.seal(summary())  # as JSON, with its own sha256 (provenance.json_sha256)
        if master:
            summary_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = summary_path.with_name(summary_path.name + ".tmp")
            tmp.write_text(record.redact(json.dumps(written, indent=1)) + "\n")
            os.replace(tmp, summary_path)
        return written

    def save_checkpoint() -> Path:
        """Write step_{step}/ (rank 0; the weights and optimiser states are the same on every rank)."""
        path = run_dir / f"step_{step:06d}"
        # Between log lines a non-finite loss goes unseen; non-finite weights must never become the "last good"
        # checkpoint. Weights are identical on all ranks, so every rank reaches the same verdict.
        if not all(torch.isfinite(p).all() for p in raw_model.parameters()):
            raise FloatingPointError(f"non-finite weights at step {step}, found before checkpointing; last good "
                                     f"checkpoint: {checkpoints[-1] if checkpoints else 'none'}")
        train_state = {"run_id": run_id, "step": step, "tokens": tokens_seen, "train_time_s": clock.read(),
                       "optimizers": [opt.state_dict() for opt in optimizers], "loader": loader.state_dict(),
                       "rng": rng_state(), "train_log": train_log, "val_log": val_log,
                       "checkpoints": checkpoints + [str(path)], "target_reached": target_reached,
                       "config": json.loads(json.dumps(config_dict)), "world_size": world_size}
        if master:
            checkpoint.save_checkpoint(path, raw_model, train_state)
        if distributed:
            dist.barrier(group=host_group)
        checkpoints.append(str(path))
        record.write(f"checkpoint: {path}")
        return path

    test_result = None
    bar = None
    if master:
        from tqdm import tqdm
        bar = tqdm(total=cfg.num_steps, initial=step, unit="step", dynamic_ncols=True, file=sys.stderr,
                   mininterval=1.0 if sys.stderr.isatty() else 30.0, desc=run_id)
        record.echo = lambda text: (bar.write(text, file=sys.stdout), sys.stdout.flush())
    last_logged = {"step": step, "tokens": tokens_seen, "time": clock.read()}
    record.write(f"training: steps {step} -> {cfg.num_steps}, eval every {cfg.eval_every or 'end only'}, "
                 f"save every {cfg.save_every or 'end only'}, target loss {cfg.target_loss}")

    # ---- The loop --------------------------------------------------------------------------------------------------
    clock.start()
    try:
        while True:
            # Schedule values. Rank 0's clock and any rank's signal are shared, so every rank makes the same decisions.
            train_time, signalled = sum_over_ranks([clock.read() if master else 0.0,
                                                    1.0 if stop_signal["signum"] is not None else 0.0])
            # The schedule follows whichever limit ends the run first (steps or clock), so either way it cools down.
            progress = min(max(step / max(cfg.num_steps, 1), train_time / budget_s if budget_s else 0.0), 1.0)
            lr_mult, momentum = schedule(step, progress)
            last = step >= cfg.num_steps or (budget_s is not None and train_time >= budget_s) or signalled > 0

            # Validation with the clock stopped (not on an interrupt: the grace period is for the checkpoint).
            due = cfg.eval_every and step % cfg.eval_every == 0
            if (last and not signalled or due) and not (val_log and val_log[-1]["step"] == step):
                clock.stop()
                model.eval()
                val = validation.mlm_metrics(logits_fn, val_batches, device, autocast)
                model.train()
                gain = control_losses["best"] - val["loss"] if control_losses else None  # nats below the best control
                val_log.append({"step": step, "tokens": tokens_seen, "train_time_s": clock.elapsed, **val,
                                "gain": gain})
                record.write(f"step:{step:>6d}/{cfg.num_steps} val_loss:{val['loss']:.4f} "
                             f"val_ppl:{val['perplexity']:.3f} val_acc:{val['accuracy']:.4f} "
                             + (f"gain:{gain:+.4f} " if gain is not None else "")
                             + f"train_time:{clock.elapsed:.1f}s tokens:{tokens_seen}")
                if target_reached is None and val["loss"] <= cfg.target_loss:
                    target_reached = {"train_time_s": clock.elapsed, "step": step, "tokens": tokens_seen}
                    record.write(f"TARGET val_loss {val['loss']:.4f} <= {cfg.target_loss} at step {step}: "
                                 f"train_time {clock.elapsed:.1f} s, {tokens_seen:,} tokens")
                    last = last or cfg.stop_at_target
                if wandb_run:
                    wandb_run.log({f"val/{k}": v for k, v in val.items()} | {"train_time_s": clock.elapsed}, step)
                write_summary()
                clock.start()
            # Checkpoint with the clock stopped.
            if (last or cfg.save_every and step % cfg.save_every == 0) and step > 0 \
                    and not (checkpoints and checkpoints[-1].endswith(f"step_{step:06d}")):
                clock.stop()
                save_checkpoint()
                clock.start()
            if last:
                break

            # Micro-batches and the optimiser step.
            loss_sum, masked, tokens = train_step(step, lr_mult, momentum)
            step += 1
            tokens_seen += tokens
            if bar is not None:
                bar.update(1)

            # Log: the global loss per masked token (a sum over ranks), throughput since the last log line.
            if step % cfg.log_every == 0 or step == cfg.num_steps:
                if distributed:
                    dist.all_reduce(loss_sum)
                loss = loss_sum.item() / max(masked, 1)
                if not math.isfinite(loss):
                    good = checkpoints[-1] if checkpoints else "none (no checkpoint written yet)"
                    raise FloatingPointError(f"loss is {loss} at step {step} (last finite log line: step "
                                             f"{train_log[-1]['step'] if train_log else 'none'}); last good "
                                             f"checkpoint: {good}")
                now = clock.read()
                dt = max(now - last_logged["time"], 1e-9)
                tps = (tokens_seen - last_logged["tokens"]) / dt
                peak = peak_flops(device)
                mfu = flops_per_token * tps / (peak * world_size) if peak else None
                lr_now = peak_lr * lr_mult
                train_log.append({"step": step, "loss": loss, "lr": lr_now, "tokens": tokens_seen,
                                  "train_time_s": now, "tokens_per_s": tps, "mfu": mfu,
                                  "mask_rate": masking.mask_rate_at(step - 1)})
                eta = (cfg.num_steps - step) * dt / (step - last_logged["step"])
                if budget_s is not None:
                    eta = min(eta, max(budget_s - now, 0.0))
                record.write(f"step:{step:>6d}/{cfg.num_steps} loss:{loss:.4f} lr:{lr_now:.3e} "
                             f"mask_rate:{train_log[-1]['mask_rate']:.3f} tokens/s:{tps:,.0f} "
                             f"mfu:{f'{100 * mfu:.1f}%' if mfu is not None else 'n/a'} train_time:{now:.1f}s "
                             f"tokens:{tokens_seen} eta:{eta:.0f}s", echo=bar is None or not sys.stderr.isatty())
                if bar is not None:
                    bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
                if wandb_run:
                    wandb_run.log({"train/loss": loss, "train/lr": lr_now, "train/tokens_per_s": tps,
                                   "train_time_s": now}, step)
                last_logged = {"step": step, "tokens": tokens_seen, "time": now}
        clock.stop()
        if stop_signal["signum"] is not None or signalled:
            status = "interrupted"
            message = f"stopped by signal {stop_signal['signum'] or 'on another rank'} at step {step}; " \
                      f"checkpoint {checkpoints[-1] if checkpoints else 'none'}"
        else:
            status = "ok"
            if has_test:
                test_batches = load_eval_split("test")
                model.eval()
                test_result = validation.mlm_metrics(logits_fn, test_batches, device, autocast)
                record.write(f"test: loss:{test_result['loss']:.4f} ppl:{test_result['perplexity']:.3f} "
                             f"acc:{test_result['accuracy']:.4f} masked tokens:{test_result['masked_tokens']}")
    except FloatingPointError as e:
        status, message = "nan", str(e)
        record.write(f"STOPPED: {message}")
    except BaseException as e:
        status, message = "error", f"{type(e).__name__}: {e}"
        record.write(f"STOPPED with an error at step {step}: {message}")
        raise
    finally:
        for s, handler in previous_handlers.items():
            signal.signal(s, handler)
        if bar is not None:
            bar.close()
            record.echo = record.print
        if clock.running:
            clock.stop()
        result = write_summary()
        if master:
            plot_losses(plot_path, train_log, val_log, cfg.target_loss, run_id, control_losses)
        if wandb_run:
            wandb_run.finish(result)

    # ---- End of run: the record, then the optional Hub push -------------------------------------------------------
    record.write(f"final: status {status}; steps {step}; tokens {tokens_seen:,}; train time {clock.elapsed:.1f} s; "
                 f"{result['tokens_per_s'] or 0:,.0f} tokens/s; final val loss "
                 f"{result['final_val_loss'] if result['final_val_loss'] is not None else 'n/a'}; time to target "
                 f"{result['time_to_target_s'] if target_reached else 'not reached'}; peak memory "
                 f"{result['peak_memory_bytes']}\nsummary: {summary_path}\nplot: {plot_path}")
    if status == "ok" and cfg.push_to_hub and master and checkpoints:
        push_to_hub(Path(checkpoints[-1]), cfg.hub_repo_id, secrets["HF_TOKEN"], summary_path, record)
    if distributed:
        dist.barrier(group=host_group)
        dist.destroy_process_group()
    return result


if __name__ == "__main__":
    try:
        outcome = main(sys.argv[1:])
    except (ConfigError, FileNotFoundError, ShardError) as e:
        sys.exit(f"train.py: {e}")
    if outcome["status"] == "interrupted":
        sys.exit(128 + (outcome["signal"] or signal.SIGTERM))  # the shell's convention for "killed by signal N"
    sys.exit(0 if outcome["status"] == "ok" else 1)
