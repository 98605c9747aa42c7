"""The run record: everything a run leaves behind besides its checkpoints, written by rank 0.

- `RunRecord`: the text log `{log_dir}/{run_id}.txt`, one line per log step and per validation, echoed to stdout,
  secret values redacted. It opens with the sources, the resolved config and `environment_report`.
- `write_summary`: `{log_dir}/{run_id}.json`, the machine-readable summary, sealed with its own sha256.
- `plot_losses`: `{log_dir}/{run_id}.png`, zoomed on the learning, with the no-learning controls drawn.
- `Wandb`: the optional mirror (imported only when enabled; offline without WANDB_API_KEY).
- `push_to_hub`: the optional upload of the final model in the transformers format (export.py).
- `Clock`: the training clock (stopped for validation, checkpoints and the untimed warm-up).
- `peak_flops`, `attended_length`: what MFU is measured against.
"""
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

import controls
import provenance

ROOT = Path(__file__).resolve().parent


class Clock:
    """Training time in seconds. Runs during training steps (data included); stopped for validation, checkpoints
    and the untimed warm-up. On CUDA, `stop()` synchronises first so queued GPU work is counted."""

    def __init__(self, device: torch.device, elapsed: float = 0.0):
        self.device, self.elapsed, self._t0 = device, elapsed, None

    def start(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self._t0 = time.perf_counter()

    def stop(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
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

    def __init__(self, project: str | None, run_id: str, config_dict: dict, log_dir: str, has_key: bool,
                 record: RunRecord):
        """project None: wandb is off (and never imported)."""
        self.record, self.run = record, None
        if project is None:
            return
        try:
            import wandb
            self.run = wandb.init(project=project, name=run_id, id=run_id, config=config_dict, dir=log_dir,
                                  mode="online" if has_key else "offline", resume="allow")
            record.write(f"wandb: logging to project {project} ({'online' if has_key else 'offline'})")
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


def _run(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def git_state() -> dict:
    """The commit of the checkout and whether tracked files differ from it."""
    return {"commit": _run(["git", "rev-parse", "HEAD"]) or None,
            "dirty": bool(_run(["git", "status", "--porcelain", "--untracked-files=no"]))}


def environment_report(device: torch.device, world_size: int, git: dict) -> str:
    """Git commit and dirty flag (`git_state()`), versions, hardware and world size: the header of the text log."""
    lines = [f"git commit: {git['commit'] or 'unknown (not a git checkout)'}"
             f"{' (dirty: uncommitted changes)' if git['dirty'] else ''}",
             f"python: {sys.version.split()[0]}  torch: {torch.__version__}  numpy: {np.__version__}  "
             f"cuda: {torch.version.cuda}  cudnn: {torch.backends.cudnn.version() if device.type == 'cuda' else None}",
             f"platform: {platform.platform()}  cpu: {platform.processor() or platform.machine()} "
             f"x{os.cpu_count()}  torch threads: {torch.get_num_threads()}",
             f"device: {device}  world size: {world_size}"]
    if device.type == "cuda":
        lines.append("gpus: " + ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())))
        lines.append(_run(["nvidia-smi"]))
    return "\n".join(lines)


def zoomed_ylim(levels: list[float]) -> tuple[float, float]:
    """A loss axis that spans the given levels (losses after the first validation, controls, target) with room for
    a legend above: the first validation near ln(33) stays off it, so the learning fills the plot."""
    span = max(levels) - min(levels)
    return min(levels) - 0.1 * span - 0.01, max(levels) + 0.25 * span + 0.01


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
        ax.set_ylim(*zoomed_ylim(levels))
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


def write_summary(path: Path, summary: dict, record: RunRecord) -> dict:
    """Seal the summary (provenance.seal: its own sha256) and write it atomically, secrets redacted."""
    written = provenance.seal(summary)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(record.redact(json.dumps(written, indent=1)) + "\n")
    os.replace(tmp, path)
    return written


def attended_length(batches: list[dict]) -> float:
    """Token-weighted mean sequence length Σ L² / Σ L of packed rows (what attention costs per token), for FLOPs."""
    lengths = np.concatenate([np.unique(row[row >= 0], return_counts=True)[1]
                              for batch in batches for row in batch["seq_ids"].numpy()] or [np.ones(1)])
    return float((lengths.astype(np.float64) ** 2).sum() / lengths.sum())


def hardware_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()


def progress_bar(total: int, initial: int, run_id: str, record: RunRecord):
    """A tqdm bar on stderr; while it is on screen the log's echo goes through it so lines do not tear it."""
    from tqdm import tqdm
    bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, file=sys.stderr,
               mininterval=1.0 if sys.stderr.isatty() else 30.0, desc=run_id)
    record.echo = lambda text: (bar.write(text, file=sys.stdout), sys.stdout.flush())
    return bar


def train_line(entry: dict, num_steps: int, eta_s: float) -> str:
    """The fixed-format log line of a training step (scripts read the JSON; people read this)."""
    mfu = f"{100 * entry['mfu']:.1f}%" if entry["mfu"] is not None else "n/a"
    return (f"step:{entry['step']:>6d}/{num_steps} loss:{entry['loss']:.4f} lr:{entry['lr']:.3e} "
            f"tokens/s:{entry['tokens_per_s']:,.0f} mfu:{mfu} train_time:{entry['train_time_s']:.1f}s "
            f"tokens:{entry['tokens']} eta:{eta_s:.0f}s")


def val_line(entry: dict, num_steps: int) -> str:
    """The fixed-format log line of a validation; gain is nats below the best no-learning control."""
    gain = f"gain:{entry['gain']:+.4f} " if entry["gain"] is not None else ""
    return (f"step:{entry['step']:>6d}/{num_steps} val_loss:{entry['loss']:.4f} val_ppl:{entry['perplexity']:.3f} "
            f"val_acc:{entry['accuracy']:.4f} {gain}train_time:{entry['train_time_s']:.1f}s tokens:{entry['tokens']}")


def final_line(result: dict) -> str:
    final = result["final_val_loss"]
    ttt = result["time_to_target_s"]
    return (f"final: status {result['status']}; steps {result['steps']}; tokens {result['tokens']:,}; train time "
            f"{result['train_time_s']:.1f} s; {result['tokens_per_s'] or 0:,.0f} tokens/s; final val loss "
            f"{final if final is not None else 'n/a'}; time to target {ttt if ttt is not None else 'not reached'}; "
            f"peak memory {result['peak_memory_bytes']}")
