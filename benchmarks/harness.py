"""Shared pieces of the benchmarks: the machine line, the data cache, the validation protocol, time-to-loss.

Every recipe the benchmarks compare is scored by the same protocol, defined once here:

    validation set  the first `n_val` sequences of sp50_valid.fasta.gz, each `<cls> residues <eos>` with the
                    residues truncated to `max_length - 2` (the ESM benchmark's truncation), written as the
                    `valid` shard of the benchmark's data folder, so train.py's own validation reads them too;
    masks           `validation.mask_sequence(tokens, VAL_MASK_RATE, seed)`: 15% of residues, `<mask>` only, the
                    same positions for every model. Every run, train.py's and the reference's, uses VAL_MASK_SEED
                    (train.py's `val_mask_seed`), whatever its training seed;
    metric          `validation.mlm_metrics`: summed cross-entropy over the masked positions / their number. train.py
                    reads the set as packed rows, the HF reference (hf_reference.py) and `checkpoint_loss` as
                    `validation_batches`: one sequence per row, padded.

Training runs are separate processes (train.py, or hf_reference.py for the Hugging Face baseline), each writing a
JSON record with `val` = list of {step, tokens, train_time_s, loss}; this module reads those records back.
"""
import contextlib
import csv
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import provenance  # noqa: E402  (after the sys.path line: benchmarks run from any directory)
import shards  # noqa: E402
import validation  # noqa: E402
from fasta import read_fasta  # noqa: E402
from vocab import CLS, EOS, encode  # noqa: E402

SHARED_DATA = ROOT.parent / "shared" / "data" / "swissprot2014_sp50"
TRAIN_FASTA = SHARED_DATA / "sp50_train.fasta.gz"
VALID_FASTA = SHARED_DATA / "sp50_valid.fasta.gz"
CACHE = Path(__file__).resolve().parent / ".cache"
RESULTS = Path(__file__).resolve().parent / "results"
DATA_NAME = "sp50"

VAL_MASK_RATE = 0.15
VAL_MASK_SEED = 0  # the validation masks of every benchmark run (train.py's val_mask_seed default)
# Every training process gets one thread (one core). On this shared 2-core machine, two torch threads slow down
# 5-10x as soon as any other process wants a core (the threads wait for each other), so one thread per run is
# what makes timings repeatable; it is the same for every recipe.
TRAIN_THREADS = int(os.environ.get("BENCH_THREADS", "1"))


# ---------------------------------------------------------------- the machine
def machine_info() -> dict:
    """What a reader needs to rerun and compare: CPU model, cores, threads, library versions, git state."""
    import torch

    try:
        import transformers
        hf_version = transformers.__version__
    except ImportError:
        hf_version = None

    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    return {
        "cpu": provenance.cpu_model(),
        "cpu_id": provenance.this_cpu_id(),  # the CPU's generation: times compare only within one (docs/RESULTS.md)
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "training_process_threads": TRAIN_THREADS,
        "torch": torch.__version__,
        "transformers": hf_version,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git_commit": git("rev-parse", "--short", "HEAD"),
        "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no")),  # as runlog.git_state
        "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else None,
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
    }


def machine_line(info: dict) -> str:
    return (f"machine: {info['cpu']} [{info['cpu_id']}], {info['cores']} cores, torch {info['torch']} "
            f"({info['torch_threads']} threads here, {info['training_process_threads']} per training process), "
            f"transformers {info['transformers']}, python {info['python']}, git {info['git_commit']}"
            f"{' (dirty)' if info['git_dirty'] else ''}, load avg at start {info['loadavg_at_start']}")


# ---------------------------------------------------------------- data
def validation_tokens(n_val: int, max_length: int) -> np.ndarray:
    """The validation shard's body: the first n_val valid sequences, residues truncated to max_length - 2."""
    rows = []
    for record in read_fasta(VALID_FASTA, limit=n_val):
        ids, _ = encode(record.residues[: max_length - 2])
        rows.append(np.concatenate([[CLS], ids, [EOS]]).astype(np.uint8))
    return np.concatenate(rows)


def prepare_data(max_length: int, n_val: int, smoke: bool = False, log=print) -> tuple[Path, str]:
    """Tokenize the training FASTA once (cached) and write this protocol's validation shard.

    Returns (data_dir, data_name) for train.py's --data_dir/--data_name. The train shards live in
    `.cache/train_full` (or `.cache/train_smoke`: the first 3,000 sequences, so a smoke run takes seconds) and
    are symlinked into a folder per (max_length, n_val), which also holds that protocol's valid shard.
    """
    kind = "smoke" if smoke else "full"
    train_dir = CACHE / f"train_{kind}"
    if not list(train_dir.glob(f"{DATA_NAME}_train_*.bin")):
        train_dir.mkdir(parents=True, exist_ok=True)
        fasta = TRAIN_FASTA
        if smoke:  # a small plain FASTA of the first sequences; the converter is the same
            fasta = train_dir / "smoke_train.fasta"
            with open(fasta, "w") as f:
                for record in read_fasta(TRAIN_FASTA, limit=3000):
                    f.write(f">{record.header}\n{record.residues}\n")
        log(f"tokenizing {fasta} into {train_dir} (once; cached)")
        t0 = time.perf_counter()
        subprocess.run([sys.executable, str(ROOT / "data" / "tokenize_fasta.py"), str(fasta),
                        "--output_dir", str(train_dir), "--name", DATA_NAME,
                        "--valid_sequences", "0", "--test_sequences", "0"], check=True, cwd=ROOT,
                       stdout=subprocess.DEVNULL)
        log(f"tokenized in {time.perf_counter() - t0:.1f} s")
    data_dir = CACHE / f"data_{kind}_L{max_length}_V{n_val}"
    data_dir.mkdir(parents=True, exist_ok=True)
    for path in train_dir.glob(f"{DATA_NAME}_train_*.bin"):
        link = data_dir / path.name
        if not link.exists():
            link.symlink_to(path.resolve())
    valid_path = data_dir / shards.shard_name(DATA_NAME, "valid", 0)
    tokens = validation_tokens(n_val, max_length)
    # Rewritten only when different (atomically), so concurrent benchmark processes can share the folder.
    if not valid_path.exists() or not np.array_equal(np.asarray(shards.read_shard(valid_path, mmap=False)), tokens):
        shards.write_shard(valid_path, tokens)
    return data_dir, DATA_NAME


# ---------------------------------------------------------------- the validation protocol (validation.py's)
def validation_batches(data_dir, data_name: str, seed: int) -> list[dict]:
    """This protocol's validation set (the valid shard `prepare_data` wrote) under the fixed masks of `seed`, one
    sequence per row (`validation.padded_batches`): the layout the HF reference needs, read by our model too."""
    sequences = validation.shard_sequences(data_dir, data_name, "valid")
    return validation.padded_batches(sequences, mask_rate=VAL_MASK_RATE, seed=seed)


def validation_loss(logits_fn, batches: list[dict]) -> float:
    """Loss per masked token on CPU in fp32. logits_fn(input_ids, seq_ids) -> (B, T, vocab) logits."""
    return validation.mlm_metrics(logits_fn, batches, "cpu", contextlib.nullcontext())["loss"]


# ---------------------------------------------------------------- time to loss
def time_to_loss(val: list[dict], target: float, key: str = "train_time_s"):
    """Training time (or, with key="tokens", tokens seen) at which a run's validation loss first reaches `target`;
    None if it never does.

    Linear interpolation in training time between the last validation above the target and the first one at or
    below it. Loss curves are convex here, so the chord crosses the target a little later than the curve does:
    the estimate errs towards *longer* times, i.e. against a recipe that crosses between two validations, and is
    exact for a run that reaches the target at a validation point (the reference at its final one).
    """
    points = sorted((v[key], v["loss"]) for v in val)
    for k, (t, loss) in enumerate(points):
        if loss <= target:
            if k == 0:
                return t
            t0, l0 = points[k - 1]
            return t0 + (t - t0) * (l0 - target) / (l0 - loss)
    return None


def loss_at(val: list[dict], t: float) -> float:
    """A run's validation loss at training time t, linearly interpolated between validations."""
    points = sorted((v["train_time_s"], v["loss"]) for v in val)
    for (t0, l0), (t1, l1) in zip(points, points[1:]):
        if t0 <= t <= t1:
            return l0 + (l1 - l0) * (t - t0) / max(t1 - t0, 1e-12)
    return points[-1][1] if t > points[-1][0] else points[0][1]


def tokens_to_loss(val: list[dict], target: float):
    return time_to_loss(val, target, key="tokens")


# ---------------------------------------------------------------- running, recording, plotting
def run_logged(cmd: list[str], log_path: Path, log=print) -> int:
    """Run one training process, its output to log_path; returns the exit code (a failed run is reported)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log("$ " + " ".join(str(c) for c in cmd))
    with open(log_path, "w") as f:
        rc = subprocess.run([str(c) for c in cmd], cwd=ROOT, stdout=f, stderr=subprocess.STDOUT,
                            env={**os.environ, "OMP_NUM_THREADS": str(TRAIN_THREADS)}).returncode
    if rc != 0:
        tail = log_path.read_text().splitlines()[-15:]
        log(f"  exit code {rc}; last lines of {log_path}:\n    " + "\n    ".join(tail))
    return rc


# ---------------------------------------------------------------- train.py runs
def train_py(args: list, out: Path, stem: str) -> list:
    """The one way these scripts launch train.py: its keys `args`, then where the run's record goes: log, JSON
    summary (`out/stem.json`) and checkpoints (`out/checkpoints`). Run it with run_logged."""
    return [sys.executable, ROOT / "train.py", *args, "--log_dir", out, "--log_name", stem,
            "--save_dir", out / "checkpoints"]


def train_py_command(tag: str, work: Path, data_dir, budget_s: float, eval_every: int, seed: int,
                     overrides: dict) -> list:
    """train.py with a time budget: it stops after budget_s of training time and its LR schedule follows time.
    Its log, summary JSON and final checkpoint go to `work`."""
    return train_py(["--data_dir", data_dir, "--data_name", DATA_NAME, "--seed", seed,
                     "--max_train_time_hours", budget_s / 3600, "--num_steps", 10 ** 9, "--eval_every", eval_every,
                     "--log_every", 25, "--val_mask_rate", VAL_MASK_RATE, "--val_mask_seed", VAL_MASK_SEED,
                     *cli_args(overrides)], work, tag)  # the overrides last: later keys win in train.py's parser


def split_at_separator(argv: list[str] | None) -> tuple[list[str], list[str]]:
    """A script's own arguments, and those after `--` that it hands to the program it runs (sweep.py,
    ablation_blocks.py): `a --b 1 -- --c 2` -> (["a", "--b", "1"], ["--c", "2"]). argv None: the command line."""
    argv = sys.argv[1:] if argv is None else argv
    if "--" not in argv:
        return list(argv), []
    return argv[:argv.index("--")], argv[argv.index("--") + 1:]


def given_keys(args: list[str]) -> set[str]:
    """The train.py keys a command line sets (`--key value` or `--key=value`, dashes read as underscores, as
    train.py's parser reads them): what a script that sets some keys itself refuses to find after its `--`."""
    return {a[2:].partition("=")[0].replace("-", "_") for a in args if a.startswith("--") and a != "--"}


def cli_args(keys: dict) -> list[str]:
    """train.py keys as command-line arguments: {"unet": False, "mask_rate": 0.15} -> --unet false --mask_rate 0.15."""
    return [a for key, value in keys.items()
            for a in (f"--{key}", str(value).lower() if isinstance(value, bool) else str(value))]


def steps_per_second(tag: str, work: Path, calib_dir, seed: int, overrides: dict, log=print) -> float:
    """A pilot of train.py (6 steps, a tiny validation set) so that a run's validations (every N steps) fall at
    about n_evals equal intervals of training time, like the reference's time-based ones."""
    cmd = train_py_command(tag + "_pilot", work, calib_dir, 3600, 0, seed, {**overrides, "num_steps": 6})
    rc = run_logged(cmd, work / f"{tag}_pilot.log", log)
    rec = load_record(work / f"{tag}_pilot.json", rc, tag + "_pilot")
    if not rec.get("steps"):
        raise RuntimeError(f"the pilot run {tag}_pilot failed: see {work / (tag + '_pilot.log')}")
    return rec["steps"] / rec["train_time_s"]


def run_train_py(tag: str, work: Path, data_dir, budget_s: float, n_evals: int, steps_per_s: float, seed: int,
                 overrides: dict, log=print) -> dict:
    eval_every = max(1, round(steps_per_s * budget_s / n_evals))
    rc = run_logged(train_py_command(tag, work, data_dir, budget_s, eval_every, seed, overrides),
                    work / f"{tag}.log", log)
    return load_record(work / f"{tag}.json", rc, tag)


def load_record(path: Path, rc: int, tag: str) -> dict:
    """A run's JSON record; a failed run becomes a record that says so (and has no validation points)."""
    if not path.exists():
        return {"run_id": tag, "status": f"failed (exit {rc}, no record)", "val": [], "final_val_loss": None}
    rec = json.loads(path.read_text())
    if rc != 0:
        rec["status"] = f"failed (exit {rc})"
    return rec


def compact(rec: dict) -> dict:
    """The fields the results keep (train.py's summary also holds its training log and full config)."""
    keep = ("run_id", "status", "n_params", "steps", "tokens", "train_time_s", "tokens_per_s", "final_val_loss",
            "padding_fraction")
    out = {k: rec.get(k) for k in keep if k in rec}
    out["val"] = [{k: v[k] for k in ("step", "tokens", "train_time_s", "loss")} for v in rec.get("val", [])]
    return out


def checkpoint_loss(ckpt: str, data_dir, seed: int) -> float:
    """A train.py checkpoint scored by this module's protocol (one sequence per row, padded batches, masks of
    `seed`): shows that train.py's packed validation and the reference's padded one measure the same thing, and
    scores runs of different seeds on the same masks."""
    import checkpoint

    model = checkpoint.load_model(ckpt).eval()
    return validation_loss(model.logits, validation_batches(data_dir, DATA_NAME, seed))


def write_csv(path: Path, rows: list[dict]):
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


def write_json(path: Path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1, default=str) + "\n")


def plot_curves(runs: dict[str, list[dict]], path: Path, target=None, title=""):
    """Validation loss vs training time (minutes), one line per recipe; a dashed line at the target loss."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for label, val in runs.items():
        pts = sorted((v["train_time_s"] / 60, v["loss"]) for v in val)
        if pts:
            ax.plot(*zip(*pts), marker="o", ms=3, label=label)
    if target is not None:
        ax.axhline(target, ls="--", c="gray", lw=1, label=f"reference final loss {target:.3f}")
    # Zoom on the part that differs: the untrained losses at step 0 (~3.5) are left above the frame.
    later = [v["loss"] for val in runs.values() for v in val if v["step"] > 0 and math.isfinite(v["loss"])]
    if later:
        ax.set_ylim(min(later) - 0.01, max(later) + 0.01)
    ax.set_xlabel("training time (min, validation excluded)")
    ax.set_ylabel("validation loss per masked token")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def fmt_table(rows: list[dict], cols: list[tuple[str, str]]) -> str:
    """A GitHub-markdown table of rows; cols = [(key, header)]. Floats get 4 significant decimals."""
    def cell(v):
        if v is None:
            return "–"
        if isinstance(v, float):
            return f"{v:.4g}" if abs(v) < 1000 else f"{v:,.0f}"
        if isinstance(v, int):
            return f"{v:,}"
        return str(v)

    lines = ["| " + " | ".join(h for _, h in cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(r.get(k)) for k, _ in cols) + " |" for r in rows]
    return "\n".join(lines)
