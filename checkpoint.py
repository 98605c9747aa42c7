"""Checkpoint directories: the model part (for inference and the Hub) and, for resuming, the training state.

    step_000100/
        model.safetensors     weights (fp32)
        model_config.json     ModelConfig as JSON: everything needed to rebuild the model
        train_state.pt        optimizers, loader position, RNG states, training clock (resume only)

A checkpoint is written to `step_000100.tmp-<pid>/` and renamed into place, so a crash mid-save never
replaces or corrupts the last good checkpoint.
"""
import dataclasses
import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from model import PLM, ModelConfig

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "model_config.json"
STATE_FILE = "train_state.pt"


def save_model(model: PLM, directory) -> None:
    """Write the weights and the model config into `directory` (which must exist)."""
    directory = Path(directory)
    state = {k: v.detach().float().cpu().contiguous() for k, v in unwrap(model).state_dict().items()}
    if getattr(unwrap(model).config, "tie_embeddings", False):
        state = {k: v.clone() for k, v in state.items()}  # safetensors refuses shared storage
    save_file(state, str(directory / MODEL_FILE))
    (directory / CONFIG_FILE).write_text(json.dumps(dataclasses.asdict(unwrap(model).config), indent=2) + "\n")


def load_model(path, device="cpu") -> PLM:
    """Rebuild a trained model from a checkpoint directory, ready for `model.embed(...)` or evaluation."""
    path = Path(path)
    if not (path / CONFIG_FILE).is_file() or not (path / MODEL_FILE).is_file():
        raise FileNotFoundError(f"{path} is not a checkpoint: it needs {CONFIG_FILE} and {MODEL_FILE}")
    try:  # from_dict also reads the configs of earlier versions, where their numbers are unchanged
        model = PLM(ModelConfig.from_dict(json.loads((path / CONFIG_FILE).read_text())))
    except ValueError as e:
        raise ValueError(f"{path / CONFIG_FILE}: {e}") from None
    state = load_file(str(path / MODEL_FILE))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{path / MODEL_FILE} does not match its config: missing {missing}, unexpected {unexpected}")
    return model.to(device).eval()


def unwrap(model):
    """The plain PLM inside DDP and/or torch.compile wrappers."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def save_checkpoint(directory, model: PLM, train_state: dict) -> Path:
    """Write `directory` (e.g. .../step_000100) atomically: model files + `train_state.pt`, in a temporary
    sibling directory that is renamed into place only once complete. Re-saving an existing step replaces it."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.with_name(f"{directory.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_model(model, tmp)
    torch.save(train_state, tmp / STATE_FILE)
    for name in os.listdir(tmp):  # flush to disk before the rename makes the checkpoint visible
        with open(tmp / name, "rb") as f:
            os.fsync(f.fileno())
    replace_directory(tmp, directory)
    return directory


def replace_directory(tmp: Path, directory: Path) -> None:
    """Rename the complete folder `tmp` to `directory`, replacing an existing one (a directory cannot be replaced
    by rename: the old one is moved aside first, then removed)."""
    if directory.exists():
        old = directory.with_name(f"{directory.name}.old-{os.getpid()}")
        os.replace(directory, old)
        os.replace(tmp, directory)
        shutil.rmtree(old)
    else:
        os.replace(tmp, directory)


def load_train_state(path) -> dict:
    """The training state saved beside the model (optimizers, loader position, RNG, clock, histories, config).

    Loaded with `weights_only=False` because it holds Python and NumPy RNG states: only resume from checkpoints
    you wrote yourself (the model part, `load_model`, is plain safetensors + JSON and safe to share)."""
    path = Path(path)
    if not (path / STATE_FILE).is_file():
        raise FileNotFoundError(f"{path} has no {STATE_FILE}: not a resumable checkpoint (a model-only directory "
                                "loads with checkpoint.load_model)")
    return torch.load(path / STATE_FILE, map_location="cpu", weights_only=False)


def rng_state() -> dict:
    """Python, numpy, torch (and CUDA) generator states: part of a checkpoint's train state."""
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
