"""Leaderboard records that prove themselves: `submit` builds one from runs, `verify` re-checks it from its files
alone, `table` renders the leaderboard.

    python records.py submit logs/r1.json logs/r2.json logs/r3.json --track cpu --name wider_mlp [--notes TEXT]
    python records.py verify records/2026-08-01_wider_mlp
    python records.py table        # README.md's leaderboard and docs/TRAINING.md's track table, regenerated

A record is a folder `records/<date>_<name>/` holding every run's `<run_id>.json`, `<run_id>.txt` (the text log,
which embeds the code that ran) and `<run_id>.png`; `config.yaml` (the runs' config, seed aside:
`python train.py --yaml_path config.yaml --seed N` repeats a run); `curves.png` (zoomed, with the target and the best
control); `record.json` (the rules it was checked against and every number the README shows); and a `README.md`
generated from `record.json`.

The tracks are defined in TRACKS and the rules in RULES, here and nowhere else: docs/TRAINING.md shows the table
that `table` generates from them, and the tool enforces exactly that. A refusal names the rule and the run.
"""
import argparse
import dataclasses
import datetime
import json
import math
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml
from scipy import stats as scipy_stats

import config
import provenance
from shards import sha256_file

ROOT = Path(__file__).resolve().parent
FORMAT = 1  # version of record.json
RECORDS_START, RECORDS_END = "<!-- records:start -->", "<!-- records:end -->"
TRACKS_START, TRACKS_END = "<!-- tracks:start -->", "<!-- tracks:end -->"


# ---------------------------------------------------------------------------------------------------------------
# Tracks: the one place where each track's rules live

@dataclass(frozen=True)
class Track:
    name: str                                # key in TRACKS and in record.json
    title: str                               # what is being competed for, in one line
    kind: str                                # "time": fastest to target_loss; "representation": best probe score
    hardware: str                            # the stated hardware, shown with every record
    device: str                              # "cuda" or "cpu": every run's device type
    world_size: int | None                   # ranks every run used (None = any)
    gpu: str | None                          # text every run's GPU name contains (None = no rule)
    max_usable_cpus: int | None              # CPU cores the run's process could use, at most (None = no rule)
    data: str                                # how to get the official data (a command)
    data_name: str                           # the official data's shard prefix (config data_name)
    train_sha256: tuple[str, ...] | None     # sha256 of the official train shards, in order (None = not pinned)
    valid_sha256: tuple[str, ...] | None     # sha256 of the official valid shards, in order (None = not set yet)
    val_mask_rate: float | None              # official val_mask_rate (None = not set yet)
    val_mask_seed: int | None                # official val_mask_seed (None = not set yet)
    val_masked_tokens: int | None            # masked tokens every validation scores (None = not set yet)
    max_params: int                          # n_params must be below this
    target_loss: float | None = None         # time tracks: validation loss per masked token to reach (nats)
    budget_s: float | None = None            # representation track: training clock per run, at most (seconds)
    probes: tuple[tuple[str, str | None], ...] = ()  # representation track: (task, split) of probe.py
    min_runs: int = 3                        # runs per record, at least (different seeds)
    alpha: float = 0.01                      # significance level of the track's test

    def __post_init__(self):
        if self.kind not in ("time", "representation"):
            raise ValueError(f"track {self.name}: kind must be 'time' or 'representation', got {self.kind!r}")
        if self.min_runs < 2:
            raise ValueError(f"track {self.name}: min_runs must be >= 2 (a spread needs two runs)")
        if self.kind == "representation" and not (self.probes and self.budget_s):
            raise ValueError(f"track {self.name}: a representation track needs probes and budget_s")


# ---- The CPU track's official constants, set 2026-12-02 from `python data/prepare_swissprot.py` and the kept
# quality-track run (logs_to_keep/cpu_quality_v1/cpu_quality.json). The validation set (first 1,000 sp50_valid
# clusters, residues cut at 510) scores 2.8224 for the best no-learning control (ngram+composition), 2.8353 for
# composition and 2.8873 for the unigram; the target is the first round value below all of them. After the first
# record, a change makes a new track.
CPU_TARGET_LOSS: float | None = 2.82       # nats per masked token, a fixed value below the best no-learning control
CPU_VALID_SHA256: str | None = "6292a52b3237c20d3a322d835bf8c10aa392bcc863c0d4a9f8cbca65fdc18dd5"  # sp50_valid_000000
CPU_VAL_MASK_RATE: float | None = 0.15     # val_mask_rate of the official validation
CPU_VAL_MASK_SEED: int | None = 0          # val_mask_seed of the official validation
CPU_VAL_MASKED_TOKENS: int | None = 48_336  # masked tokens per validation (provenance.validation.masked_tokens)
CPU_TRAIN_SHA256: tuple[str, ...] | None = (  # sha256 of sp50_train_*.bin in order: the whole sp50_train split
    "f794a956bc1ac9932c5f378014c11a4e9e715c4b6bd23ec0fd6795b1c0a476d9",)

# The speed and representation tracks train on the published OMGprot50 shards; their valid shard's sha256 and
# masked-token count are set from the first run on them (docs/TRAINING.md), until then submissions are refused.
OMG_VALID_SHA256: str | None = None
OMG_VAL_MASKED_TOKENS: int | None = None

TRACKS: dict[str, Track] = {
    "speed": Track(
        name="speed", kind="time", title="shortest training time to validation loss ≤ 2.1 on OMGprot50",
        hardware="8×H100", device="cuda", world_size=8, gpu="H100", max_usable_cpus=None,
        data="python data/download_data.py --data_name omg_prot50 --num_chunks N", data_name="omg_prot50",
        train_sha256=None, valid_sha256=(OMG_VALID_SHA256,) if OMG_VALID_SHA256 else None,
        val_mask_rate=0.15, val_mask_seed=0, val_masked_tokens=OMG_VAL_MASKED_TOKENS,
        max_params=150_000_000, target_loss=2.1),
    "cpu": Track(
        name="cpu", kind="time",
        title="shortest training time on 2 CPU cores to a validation loss below the no-learning controls "
              "(Swiss-Prot sp50)",
        hardware="CPU, at most 2 usable cores", device="cpu", world_size=None, gpu=None, max_usable_cpus=2,
        data="python data/prepare_swissprot.py", data_name="sp50", train_sha256=CPU_TRAIN_SHA256,
        valid_sha256=(CPU_VALID_SHA256,) if CPU_VALID_SHA256 else None, val_mask_rate=CPU_VAL_MASK_RATE,
        val_mask_seed=CPU_VAL_MASK_SEED, val_masked_tokens=CPU_VAL_MASKED_TOKENS, max_params=150_000_000,
        target_loss=CPU_TARGET_LOSS),
    "repr": Track(
        name="repr", kind="representation",
        title="best frozen-embedding probe score (FLIP GB1 three_vs_rest Spearman, secondary structure Q3) "
              "after at most 8 h of training on OMGprot50",
        hardware="8×H100", device="cuda", world_size=8, gpu="H100", max_usable_cpus=None,
        data="python data/download_data.py --data_name omg_prot50 --num_chunks N", data_name="omg_prot50",
        train_sha256=None, valid_sha256=(OMG_VALID_SHA256,) if OMG_VALID_SHA256 else None,
        val_mask_rate=0.15, val_mask_seed=0, val_masked_tokens=OMG_VAL_MASKED_TOKENS,
        max_params=150_000_000, budget_s=8 * 3600, probes=(("gb1", "three_vs_rest"), ("secondary_structure", None))),
}

# Config keys that may differ between the runs of a record: they do not change what is computed.
BOOKKEEPING_KEYS = ("seed", "log_name", "log_dir", "save_dir", "data_dir", "resume_from", "wandb", "wandb_project",
                    "push_to_hub", "hub_repo_id")
# Every rule, in the order checked. docs/TRAINING.md shows this text (generated by `table`).
RULES = {
    "integrity": "Each run is a `<run_id>.json` with its text log `<run_id>.txt` beside it, both written by "
                 "train.py. The JSON's `provenance.json_sha256` matches its content; the code embedded in the log "
                 "hashes to `provenance.code.sha256` and to the log's `code sha256:` line; the log's config, run "
                 "id, parameter count, data sha256, validation lines (step, loss, training clock, tokens) and final "
                 "status agree with the JSON.",
    "status": "Each run ended with `status: ok` in one process from step 0 (`resumed_from: null`).",
    "runs": "At least the track's `min_runs` runs, with different run ids.",
    "same code": "All runs ran the same code: equal `provenance.code.sha256`.",
    "same config": "All runs have the same config except `seed` and the bookkeeping keys ("
                   + ", ".join(f"`{k}`" for k in BOOKKEEPING_KEYS[1:]) + "), and every seed is different.",
    "same data": "All runs read the same shards: equal `provenance.data.sha256` (every train, valid and test "
                 "shard's sha256).",
    "data": "`data_name` is the track's; where the track pins the training shards, their sha256 match in order.",
    "validation": "The validation is the track's official one: the valid shards' sha256, `val_mask_rate`, "
                  "`val_mask_seed`, and the number of masked tokens scored at every validation.",
    "parameters": "`n_params` (every distinct parameter, embeddings included) is below the track's limit.",
    "hardware": "Every run ran on the track's hardware: its device type, world size, GPU name and usable CPU cores.",
    "target": "Time tracks. A run with a step budget: for a validation step S logged by every run, and every "
              "later step they all logged, the runs' mean validation loss is below `target_loss` (one-sided "
              "one-sample t-test, p < `alpha`); the record's time is the mean over runs of the training clock at the "
              "first such S, with its 95% t-interval. A run with a time budget (`max_train_time_hours`, the same for "
              "every run): its LR schedule follows the clock, so its validations fall at different steps and only "
              "its final one comes after the cooldown; the runs' final validation losses are tested the same way, "
              "and the record's time is the mean training clock of those final validations. Each run's own first "
              "validation at or below the target is shown beside it.",
    "budget": "Representation track. Each run's training clock (`train_time_s`) is within `budget_s`.",
    "evaluation": "Representation track. For every run and every probe of the track, a `probe.py "
                  "--output` JSON of the run's final checkpoint (its `checkpoint_sha256` equals the run's "
                  "`provenance.checkpoint_sha256`), on the whole task (not subsampled), final layer. A run's score "
                  "is the mean of its probes' test scores; the record's score is the mean over runs, with its 95% "
                  "t-interval.",
}
WARNINGS = {
    "hardware differs": "the runs' `provenance.hardware.summary` are not all the same",
    "noisy machine": "a run's 1-minute load average was above half the machine's cores before it started, or "
                     "above the number of cores when it ended (`provenance.machine`)",
}
# Prior-art spellings that train.py has already resolved into recipe / cooldown_frac (setting both is refused).


@dataclass(frozen=True)
class Violation:
    rule: str    # a key of RULES (or "record" for a stored record whose files disagree)
    run: str     # the run that broke it, or "all runs"
    detail: str

    def __str__(self) -> str:
        return f"rule '{self.rule}', {self.run}: {self.detail}"


class RecordRefused(Exception):
    """The runs or the record break rules; `violations` names each rule and run."""

    def __init__(self, violations: list[Violation]):
        self.violations = violations
        super().__init__("\n".join(str(v) for v in violations))


# ---------------------------------------------------------------------------------------------------------------
# Statistics (scipy's t distribution; tests/test_records.py checks them against scipy.stats.ttest_1samp)

def mean_sd(values: list[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else float("nan")


def t_test_below(values: list[float], target: float) -> dict:
    """One-sided one-sample t-test of H1: mean(values) < target. Zero spread gives p = 0 or 1."""
    n = len(values)
    mean, sd = mean_sd(values)
    if sd == 0:
        t, p = (-math.inf, 0.0) if mean < target else (math.inf, 1.0)
    else:
        t = (mean - target) / (sd / math.sqrt(n))
        p = float(scipy_stats.t.cdf(t, n - 1))
    return {"n": n, "mean": mean, "sd": sd, "target": target, "t": t, "df": n - 1, "p": p}


def mean_interval(values: list[float], confidence: float = 0.95) -> dict:
    """Mean, sample standard deviation and the two-sided t-interval of the mean."""
    n = len(values)
    mean, sd = mean_sd(values)
    half = float(scipy_stats.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
    return {"n": n, "mean": mean, "sd": sd, "low": mean - half, "high": mean + half, "confidence": confidence,
            "min": min(values), "max": max(values)}


# ---------------------------------------------------------------------------------------------------------------
# Runs: loading, and the integrity of each run's JSON and text log

@dataclass
class Run:
    json_path: Path
    log_path: Path
    summary: dict
    log: str | None

    @property
    def run_id(self) -> str:
        return str(self.summary.get("run_id"))

    @property
    def prov(self) -> dict:
        return self.summary.get("provenance") or {}

    @property
    def config(self) -> dict:
        return self.summary.get("config") or {}

    def val_at(self, step: int) -> dict:
        return next(v for v in self.summary["val"] if v["step"] == step)


def load_run(json_path) -> Run:
    json_path = Path(json_path)
    summary = json.loads(json_path.read_text())
    if not isinstance(summary, dict):
        raise ValueError(f"{json_path}: not a run summary")
    log_path = json_path.with_suffix(".txt")
    return Run(json_path, log_path, summary, log_path.read_text() if log_path.is_file() else None)


def _log_lines(log: str, pattern: str) -> list[re.Match]:
    return list(re.finditer(pattern, log, re.MULTILINE))


def integrity(run: Run) -> list[str]:
    """What is wrong with a run's JSON and text log, each as one sentence (empty = consistent)."""
    try:
        return _integrity(run)
    except (KeyError, TypeError, ValueError, AttributeError) as e:  # a JSON not shaped like train.py's
        return [f"{run.json_path.name} is not a train.py summary ({type(e).__name__}: {e})"]


def _integrity(run: Run) -> list[str]:
    s, prov = run.summary, run.prov
    if prov.get("format") != provenance.FORMAT:
        return [f"{run.json_path.name} has no provenance block of format {provenance.FORMAT} (a run not written "
                f"by a train.py with provenance.py)"]
    problems = []
    if prov.get("json_sha256") != provenance.json_sha256(s):
        problems.append(f"{run.json_path.name} was changed after train.py wrote it (provenance.json_sha256 does "
                        "not match its content)")
    if run.log is None:
        return problems + [f"the text log {run.log_path.name} is missing beside {run.json_path.name}"]
    log = run.log
    try:
        sources = provenance.read_code_sections(log)
    except ValueError as e:
        return problems + [f"{run.log_path.name}: {e}"]
    recomputed = provenance.code_hash(sources)
    stated = [m.group(1) for m in _log_lines(log, r"^code sha256: ([0-9a-f]{64})")]
    if recomputed != prov.get("code", {}).get("sha256") or stated != [recomputed]:
        changed = [name for name, text in sources.items()
                   if provenance.sha256_text(text) != prov.get("code", {}).get("files", {}).get(name)]
        problems.append(f"the code embedded in {run.log_path.name} hashes to {recomputed[:12]}…, but the JSON says "
                        f"{str(prov.get('code', {}).get('sha256'))[:12]}… and the log's code line says "
                        f"{[h[:12] + '…' for h in stated]} (files that differ: {', '.join(changed) or 'none'})")
    try:
        logged_config = yaml.safe_load(provenance.read_config_section(log))
    except (ValueError, yaml.YAMLError):
        logged_config = None
    if logged_config != json.loads(json.dumps(s.get("config"))):
        problems.append(f"the config in {run.log_path.name} differs from the JSON's")
    checks = [("run id", r"^run id: (.+)$", [run.run_id]),
              ("parameter count", r"^model: ([\d,]+) parameters", [f"{s.get('n_params') or 0:,}"]),
              ("data sha256", r"^data sha256: ([0-9a-f]{64})", [(prov.get("data") or {}).get("sha256")]),
              ("final status", r"^final: status (\w+);", [s.get("status")])]
    for what, pattern, expected in checks:
        found = [m.group(1) for m in _log_lines(log, pattern)]
        if found != expected:
            problems.append(f"{what}: the log says {found or 'nothing'}, the JSON says {expected}")
    logged_val = [(int(m.group(1)), m.group(2), m.group(3), int(m.group(4))) for m in _log_lines(
        log, r"^step:\s*(\d+)/\d+ val_loss:(\S+) .*?train_time:([\d.]+)s tokens:(\d+)")]
    json_val = [(v["step"], f"{v['loss']:.4f}", f"{v['train_time_s']:.1f}", v["tokens"]) for v in s.get("val", [])]
    if logged_val != json_val:
        diff = next(((a, b) for a, b in zip(logged_val, json_val) if a != b), None)
        problems.append(f"the validation lines of {run.log_path.name} ({len(logged_val)}) and the JSON's val list "
                        f"({len(json_val)}) differ" + (f": log {diff[0]} vs JSON {diff[1]} "
                                                       "(step, loss, training clock, tokens)" if diff else ""))
    return problems


# ---------------------------------------------------------------------------------------------------------------
# The rules

def _differs(runs: list[Run], key) -> list[Run]:
    """Runs whose value of key(run) differs from the most common value (the first run's on a tie)."""
    values = [json.dumps(key(r), sort_keys=True) for r in runs]
    common = max(values, key=lambda v: (values.count(v), -values.index(v)))
    return [r for r, v in zip(runs, values) if v != common]


def _config_diff(a: dict, b: dict) -> list[str]:
    return sorted(k for k in set(a) | set(b) if k not in BOOKKEEPING_KEYS and a.get(k) != b.get(k))


def check_runs(track: Track, runs: list[Run], evals: list[dict] | None = None) -> tuple[list[Violation], dict]:
    """Every rule of the track -> (violations, {"statistics", "per_run", "warnings"}) (statistics only if valid)."""
    out: list[Violation] = []
    intact = []  # the rules after `status` read only runs whose files are consistent
    for run in runs:
        problems = integrity(run)
        out += [Violation("integrity", run.run_id, p) for p in problems]
        s = run.summary
        if s.get("status") != "ok":
            out.append(Violation("status", run.run_id, f"status is {s.get('status')!r} ({s.get('message')})"))
        if s.get("resumed_from"):
            out.append(Violation("status", run.run_id, f"resumed from {s['resumed_from']}: a record run is one "
                                                       "process from step 0"))
        if not problems:
            intact.append(run)
    if len(runs) < track.min_runs:
        out.append(Violation("runs", "all runs", f"{len(runs)} run(s); track {track.name} needs at least "
                                                 f"{track.min_runs}"))
    ids = [r.run_id for r in runs]
    for dup in sorted({i for i in ids if ids.count(i) > 1}):
        out.append(Violation("runs", dup, "two runs have this run id"))
    if intact:
        for run in _differs(intact, lambda r: r.prov.get("code", {}).get("sha256")):
            out.append(Violation("same code", run.run_id, f"code sha256 {run.prov['code']['sha256'][:12]}… differs "
                                                          f"from the other runs'"))
        reference = next(r for r in intact if r not in _differs(intact, lambda r: {
            k: v for k, v in r.config.items() if k not in BOOKKEEPING_KEYS}))
        for run in intact:
            keys = _config_diff(reference.config, run.config)
            if keys:
                out.append(Violation("same config", run.run_id, f"config differs from {reference.run_id}'s in "
                                                                f"{', '.join(keys)}"))
        seeds = [r.config.get("seed") for r in intact]
        for run in intact:
            if seeds.count(run.config.get("seed")) > 1:
                out.append(Violation("same config", run.run_id, f"seed {run.config.get('seed')} is used by another "
                                                                "run (each run needs its own seed)"))
        for run in _differs(intact, lambda r: (r.prov.get("data") or {}).get("sha256")):
            out.append(Violation("same data", run.run_id, "its shards' sha256 differ from the other runs'"))
    out += _check_track(track, intact)
    per_run = {r.run_id: _run_facts(r) for r in intact}
    result = {"per_run": per_run, "warnings": _warnings(intact), "statistics": None}
    stats, violations = None, []
    if len(intact) == len(runs):  # statistics over a subset of the runs would mislead
        if track.kind == "time":
            stats, violations = _time_statistics(track, intact)
        else:
            stats, violations = _representation_statistics(track, intact, evals or [], per_run)
    out += violations
    if not out:
        result["statistics"] = stats
    return out, result


# The module constant behind each official value that may still be unset, per track (for the refusal's hint).
CONSTANTS = {"cpu": {"valid_sha256": "CPU_VALID_SHA256", "val_mask_rate": "CPU_VAL_MASK_RATE",
                     "val_mask_seed": "CPU_VAL_MASK_SEED", "val_masked_tokens": "CPU_VAL_MASKED_TOKENS",
                     "target_loss": "CPU_TARGET_LOSS"},
             "speed": {"valid_sha256": "OMG_VALID_SHA256", "val_masked_tokens": "OMG_VAL_MASKED_TOKENS"},
             "repr": {"valid_sha256": "OMG_VALID_SHA256", "val_masked_tokens": "OMG_VAL_MASKED_TOKENS"}}


def _unset_validation(track: Track, runs: list[Run]) -> list[Violation]:
    """A refusal while the track's official validation is not set, with the values the runs carry, written as
    the constants to set (for whoever sets them)."""
    fields = {"valid_sha256": "shard_sha256", "val_mask_rate": "mask_rate", "val_mask_seed": "mask_seed",
              "val_masked_tokens": "masked_tokens"}
    missing = [f for f in fields if getattr(track, f) is None]
    if not missing:
        return []
    hints = []
    for f in missing:
        carried = sorted({json.dumps(r.prov.get("validation", {}).get(fields[f])) for r in runs})
        if f == "valid_sha256":
            carried = [c[1:-1] for c in carried]  # one valid shard: the constant is its sha256 string
        name = CONSTANTS.get(track.name, {}).get(f, f)
        hints.append(f"{name} = {' or '.join(carried) or '?'}")
    return [Violation("validation", "all runs", f"track {track.name} has no official {', '.join(missing)} yet; "
                                                f"the submitted runs carry: {'; '.join(hints)} (records.py)")]


def _check_track(track: Track, runs: list[Run]) -> list[Violation]:
    out = []
    out += _unset_validation(track, runs)
    for run in runs:
        prov, s = run.prov, run.summary
        data, val, hw = prov.get("data") or {}, prov.get("validation") or {}, prov.get("hardware") or {}
        if data.get("name") != track.data_name or run.config.get("data_name") != track.data_name:
            out.append(Violation("data", run.run_id, f"data_name is {run.config.get('data_name')!r}, the track's "
                                                     f"is {track.data_name!r} ({track.data})"))
        train = [e["sha256"] for e in data.get("shards", {}).get("train", [])]
        if track.train_sha256 is not None and train != list(track.train_sha256):
            out.append(Violation("data", run.run_id, "its training shards' sha256 are not the track's"))
        official = {"shard_sha256": list(track.valid_sha256) if track.valid_sha256 else None,
                    "mask_rate": track.val_mask_rate, "mask_seed": track.val_mask_seed,
                    "masked_tokens": track.val_masked_tokens}
        for key, want in official.items():
            if want is not None and val.get(key) != want:
                out.append(Violation("validation", run.run_id, f"validation {key} is {val.get(key)}, the track's "
                                                               f"official value is {want}"))
        if track.val_masked_tokens is not None:
            bad = [v["step"] for v in s.get("val", []) if v.get("masked_tokens") != track.val_masked_tokens]
            if bad:
                out.append(Violation("validation", run.run_id, f"validations at steps {bad} did not score "
                                                               f"{track.val_masked_tokens} masked tokens"))
        if not (isinstance(s.get("n_params"), int) and s["n_params"] < track.max_params):
            out.append(Violation("parameters", run.run_id, f"{s.get('n_params')} parameters; the track allows "
                                                           f"fewer than {track.max_params:,}"))
        wrong = []
        if hw.get("device") != track.device:
            wrong.append(f"device {hw.get('device')} (needs {track.device})")
        if track.world_size is not None and hw.get("world_size") != track.world_size:
            wrong.append(f"world size {hw.get('world_size')} (needs {track.world_size})")
        if track.gpu is not None and track.gpu not in str(hw.get("gpu")):
            wrong.append(f"GPU {hw.get('gpu')} (needs {track.gpu})")
        if track.max_usable_cpus is not None and not (hw.get("usable_cpus") or 1e9) <= track.max_usable_cpus:
            wrong.append(f"{hw.get('usable_cpus')} usable CPU cores (at most {track.max_usable_cpus})")
        if wrong:
            out.append(Violation("hardware", run.run_id, f"ran on {hw.get('summary')}: " + "; ".join(wrong)))
    return out


def _run_facts(run: Run) -> dict:
    s, prov = run.summary, run.prov
    return {"run_id": run.run_id, "seed": run.config.get("seed"), "hardware": prov.get("hardware", {}).get("summary"),
            "machine": prov.get("machine"), "steps": s.get("steps"), "train_time_s": s.get("train_time_s"),
            "final_val_loss": s.get("final_val_loss"), "n_params": s.get("n_params")}


def _warnings(runs: list[Run]) -> list[str]:
    out = []
    kinds = sorted({r.prov.get("hardware", {}).get("summary") for r in runs}, key=str)
    if len(kinds) > 1:
        out.append(f"hardware differs: the runs ran on {' / '.join(map(str, kinds))}")
    for run in runs:
        machine, cores = run.prov.get("machine") or {}, run.prov.get("hardware", {}).get("cpu_count") or 1
        before, after = machine.get("loadavg_before"), machine.get("loadavg_after")
        if before and before[0] > cores / 2 or after and after[0] > cores:
            out.append(f"noisy machine: {run.run_id} had load average {before and before[0]} before and "
                       f"{after and after[0]} after on {cores} cores (CPU/wall {machine.get('cpu_per_wall') or 0:.2f})")
    return out


def _time_statistics(track: Track, runs: list[Run]) -> tuple[dict | None, list[Violation]]:
    if track.target_loss is None:
        name = CONSTANTS.get(track.name, {}).get("target_loss", "target_loss")
        return None, [Violation("target", "all runs", f"track {track.name} has no official target_loss yet "
                                                      f"({name} in records.py)")]
    if len(runs) < 2:
        return None, []
    budgeted = runs[0].config.get("max_train_time_hours") is not None
    if budgeted:  # the final validation of each run, after its clock-driven cooldown (the config rule: same budget)
        points = [("final", t_test_below([r.summary["val"][-1]["loss"] for r in runs], track.target_loss),
                   {r.run_id: r.summary["val"][-1] for r in runs})]
    else:
        common = sorted(set.intersection(*({v["step"] for v in r.summary.get("val", [])} for r in runs)))
        points = [(step, t_test_below([r.val_at(step)["loss"] for r in runs], track.target_loss),
                   {r.run_id: r.val_at(step) for r in runs}) for step in common]
    first = next((i for i in range(len(points)) if all(t["p"] < track.alpha for _, t, _ in points[i:])), None)
    if first is None:
        if not points:
            return None, [Violation("target", "all runs", "the runs have no validation step in common")]
        where, best, at = min(points, key=lambda point: point[1]["p"])
        above = [rid for rid, v in at.items() if v["loss"] > track.target_loss]
        where = "the final validations" if budgeted else \
            f"no validation step logged by all runs (and every later one); closest: step {where}"
        return None, [Violation("target", ", ".join(above) or "all runs",
                                f"target not reached: at {where} the mean loss {best['mean']:.4f} is not below "
                                f"{track.target_loss} at p < {track.alpha} (p = {best['p']:.3g})"
                                + (f"; runs above the target there: {', '.join(above)}" if above else ""))]
    where, test, at = points[first]
    first_crossing = {r.run_id: next((v["train_time_s"] for v in r.summary["val"] if v["loss"] <= track.target_loss),
                                     None) for r in runs}
    return {"reported_step": where, "target_loss": track.target_loss, "alpha": track.alpha, "loss": test,
            "time_s": mean_interval([v["train_time_s"] for v in at.values()]),
            "per_run": {rid: {"step": v["step"], "loss": v["loss"], "train_time_s": v["train_time_s"],
                              "tokens": v["tokens"], "first_at_target_s": first_crossing[rid]}
                        for rid, v in at.items()},
            "per_step": [{"step": w, "mean_loss": t["mean"], "p": t["p"]} for w, t, _ in points]}, []


def _representation_statistics(track: Track, runs: list[Run], evals: list[dict], per_run: dict):
    out, scores = [], {}
    for run in runs:
        if (run.summary.get("train_time_s") or math.inf) > track.budget_s:
            out.append(Violation("budget", run.run_id, f"trained {run.summary.get('train_time_s'):.0f} s of clock, "
                                                       f"the budget is {track.budget_s:.0f} s"))
        sha = run.prov.get("checkpoint_sha256")
        run_scores = {}
        for task, split in track.probes:
            found = [e for e in evals if e.get("checkpoint_sha256") == sha and sha and e.get("task") == task
                     and (split is None or e.get("split") == split)]
            model = [r for e in found for r in e.get("results", []) if r.get("features") == "model"
                     and not r.get("subsampled") and r.get("layer") is None]
            label = f"{task}" + (f"/{split}" if split else "")
            if len(model) != 1:
                out.append(Violation("evaluation", run.run_id, f"needs exactly one full-task, final-layer "
                                                               f"`probe.py --task {task}` result of its final "
                                                               f"checkpoint (sha256 {str(sha)[:12]}…), found "
                                                               f"{len(model)}"))
                continue
            run_scores[label] = model[0]["score"]
        if len(run_scores) == len(track.probes):
            scores[run.run_id] = run_scores
    if out or len(scores) < 2:
        return None, out
    per_run_score = {rid: sum(s.values()) / len(s) for rid, s in scores.items()}
    return {"score": mean_interval(list(per_run_score.values())),
            "per_probe": {label: mean_interval([s[label] for s in scores.values()]) for label in
                          next(iter(scores.values()))},
            "per_run": {rid: {"score": per_run_score[rid], "probes": scores[rid]} for rid in scores}}, []


# ---------------------------------------------------------------------------------------------------------------
# Building, writing and verifying a record folder

def record_config(runs: list[Run]) -> dict:
    """The runs' shared config as a YAML-able dict: seed, run paths and integrations left out, and keys removed
    since the runs (config.REMOVED) left out where they held their no-op value, so today's train.py reads it."""
    dropped = set(BOOKKEEPING_KEYS) - {"data_dir"}
    return {k: v for k, v in config.without_removed(runs[0].config).items() if k not in dropped}


def render_yaml(record: dict) -> str:
    seeds = " ".join(str(r["seed"]) for r in record["runs"])
    return (f"# Record {record['name']} ({record['track']} track), {record['date']}. A run of it:\n"
            f"#   python train.py --yaml_path records/{record['folder']}/config.yaml --seed SEED\n"
            f"# with the record's seeds: {seeds}. The code that ran is embedded in every <run_id>.txt here.\n"
            + yaml.safe_dump(record["config"], sort_keys=False))


def build_record(track: Track, runs: list[Run], result: dict, name: str, date: str, notes: str,
                 evals: list[tuple[str, dict]]) -> dict:
    """record.json's content: a pure function of the runs' files, so `verify` can rebuild and compare it."""
    first = runs[0].prov
    return {"format": FORMAT, "folder": f"{date}_{name}", "name": name, "date": date, "notes": notes,
            "track": track.name, "rules": json.loads(json.dumps(dataclasses.asdict(track))),
            "code_sha256": first["code"]["sha256"], "data": {k: first["data"][k] for k in ("name", "sha256")},
            "validation": first["validation"], "n_params": runs[0].summary["n_params"],
            "hardware": sorted({r.prov["hardware"]["summary"] for r in runs}),
            "config": json.loads(json.dumps(record_config(runs))),
            "runs": [{**result["per_run"][r.run_id],
                      "files": {"json": f"{r.run_id}.json", "log": f"{r.run_id}.txt",
                                "plot": f"{r.run_id}.png" if r.json_path.with_suffix(".png").is_file() else None},
                      "sha256": {"json": sha256_file(r.json_path), "log": sha256_file(r.log_path)}} for r in runs],
            "evaluations": [{"file": file, "sha256": provenance.sha256_text(json.dumps(e, sort_keys=True))}
                            for file, e in evals],
            "statistics": result["statistics"], "warnings": result["warnings"]}


def _fmt_s(seconds: float) -> str:
    return f"{seconds:,.1f} s" + (f" ({seconds / 60:.1f} min)" if seconds >= 120 else "")


def _where(statistics: dict) -> str:
    """Where a time record compares its runs: a common step, or each run's final validation (time budget)."""
    step = statistics["reported_step"]
    return f"step {step}" if step != "final" else "each run's final validation (time budget; after its cooldown)"


def headline(record: dict) -> str:
    st = record["statistics"]
    if record["rules"]["kind"] == "time":
        t, loss = st["time_s"], st["loss"]
        return (f"**{_fmt_s(t['mean'])} to validation loss < {st['target_loss']}** (mean of {t['n']} runs, 95% "
                f"interval {t['low']:,.1f}–{t['high']:,.1f} s), at {_where(st)}, where the runs' mean "
                f"validation loss {loss['mean']:.4f} is below the target with p = {loss['p']:.2g} (one-sided t-test; "
                f"the track requires p < {st['alpha']})")
    sc = st["score"]
    return (f"**score {sc['mean']:.4f}** (mean over {sc['n']} runs of the mean probe score, 95% interval "
            f"{sc['low']:.4f}–{sc['high']:.4f}): " + ", ".join(f"{k} {v['mean']:.4f}" for k, v in
                                                                 st["per_probe"].items()))


def render_readme(record: dict) -> str:
    st, rules, folder = record["statistics"], record["rules"], record["folder"]
    val = record["validation"]
    lines = [f"# {record['name']} ({record['track']} track, {record['date']})", ""]
    if record["notes"]:
        lines += [record["notes"].strip(), ""]
    lines += [headline(record) + ".", "",
              "| | |", "|---|---|",
              f"| track | `{record['track']}`: {rules['title']}; rules in docs/TRAINING.md |",
              f"| hardware | {'; '.join(record['hardware'])} (track: {rules['hardware']}) |",
              f"| code | sha256 `{record['code_sha256']}`, embedded in every `<run_id>.txt` |",
              f"| data | `{record['data']['name']}`, shards sha256 `{record['data']['sha256']}` |",
              f"| validation | {val['masked_tokens']:,} masked tokens of {val['sequences']:,} sequences, mask rate "
              f"{val['mask_rate']}, mask seed {val['mask_seed']}, valid shards sha256 "
              f"{', '.join(f'`{h}`' for h in val['shard_sha256'])} |",
              f"| parameters | {record['n_params']:,} |",
              f"| repeat a run | `python train.py --yaml_path records/{folder}/config.yaml --seed SEED` |",
              f"| check this record | `python records.py verify records/{folder}` |", "", "## Runs", ""]
    if rules["kind"] == "time":
        lines += [f"| run | seed | val loss at {_where(st)} | training clock there | first validation "
                  f"≤ target | final val loss | load avg before → after | CPU/wall |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in record["runs"]:
            at, m = st["per_run"][r["run_id"]], r["machine"] or {}
            first = f"{at['first_at_target_s']:,.1f} s" if at["first_at_target_s"] is not None else "—"
            lines.append(f"| [{r['run_id']}]({r['files']['log']}) | {r['seed']} | {at['loss']:.4f} | "
                         f"{at['train_time_s']:,.1f} s | {first} | {r['final_val_loss']:.4f} | "
                         f"{_load(m.get('loadavg_before'))} → {_load(m.get('loadavg_after'))} | "
                         f"{m.get('cpu_per_wall') or 0:.2f} |")
    else:
        labels = list(st["per_probe"])
        lines += ["| run | seed | score | " + " | ".join(labels) + " | training clock | load avg before → after |",
                  "|---|---|---|" + "---|" * len(labels) + "---|---|"]
        for r in record["runs"]:
            sc, m = st["per_run"][r["run_id"]], r["machine"] or {}
            lines.append(f"| [{r['run_id']}]({r['files']['log']}) | {r['seed']} | {sc['score']:.4f} | "
                         + " | ".join(f"{sc['probes'][k]:.4f}" for k in labels)
                         + f" | {r['train_time_s']:,.1f} s | {_load(m.get('loadavg_before'))} → "
                           f"{_load(m.get('loadavg_after'))} |")
    if record["warnings"]:
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in record["warnings"]]
    lines += ["", "![validation loss against training clock](curves.png)", "",
              "Generated by `records.py submit`; `records.py verify` rebuilds this file from the runs and compares.",
              ""]
    return "\n".join(lines)


def _load(loadavg) -> str:
    return f"{loadavg[0]:.2f}" if loadavg else "n/a"


def plot_curves(path: Path, runs: list[Run], record: dict) -> tuple[float, float]:
    """Every run's validation loss against the training clock, zoomed on the learning (each run's first validation,
    near ln(33), is off the axis), with the target and the runs' best no-learning control drawn -> the y-limits."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import runlog  # with torch: only when a plot is drawn
    fig, ax = plt.subplots(figsize=(7, 4.5))
    levels = []
    for run in runs:
        val = run.summary["val"]
        ax.plot([v["train_time_s"] for v in val], [v["loss"] for v in val], "o-", ms=3, lw=1.2,
                label=f"{run.run_id} (seed {run.config.get('seed')})")
        levels += [v["loss"] for v in val[1:] or val]
    controls = runs[0].summary.get("controls") or {}
    if "best" in controls:  # the runs share one validation set (checked), so one set of controls
        ax.axhline(controls["best"], color="gray", ls="-.", lw=1,
                   label=f"best no-learning control ({controls.get('best_name')}) {controls['best']:.4f}")
        levels.append(controls["best"])
    st = record["statistics"]
    if record["rules"]["kind"] == "time":
        ax.axhline(st["target_loss"], color="k", ls="--", lw=1, label=f"target {st['target_loss']}")
        ax.axvline(st["time_s"]["mean"], color="gray", ls=":", lw=1, label=f"record {st['time_s']['mean']:,.1f} s")
        levels.append(st["target_loss"])
    ylim = runlog.zoomed_ylim(levels)
    ax.set_ylim(*ylim)
    ax.set_xlabel("training clock (s)")
    ax.set_ylabel("validation loss per masked token (nats)")
    ax.set_title(f"{record['name']} ({record['track']} track)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return ylim


def _load_evals(paths) -> list[tuple[Path, dict]]:
    return [(Path(p), json.loads(Path(p).read_text())) for p in paths]


def submit(run_paths, track_name: str, name: str, records_dir=ROOT / "records", notes: str = "",
           date: str | None = None, eval_paths=()) -> tuple[Path, list[str]]:
    """Check the runs against the track and write records/<date>_<name>/ -> (folder, warnings).

    Raises RecordRefused naming every broken rule and run; ValueError for a bad name, track or folder."""
    if track_name not in TRACKS:
        raise ValueError(f"unknown track {track_name!r}: one of {', '.join(TRACKS)}")
    if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,47}", name):
        raise ValueError(f"name {name!r}: use 1-48 lower-case letters, digits, '_' or '-'")
    date = date or datetime.date.today().isoformat()
    folder = Path(records_dir) / f"{date}_{name}"
    if folder.exists():
        raise ValueError(f"{folder} exists already")
    track, runs = TRACKS[track_name], [load_run(p) for p in run_paths]
    evals = _load_evals(eval_paths)
    violations, result = check_runs(track, runs, [e for _, e in evals])
    if violations:
        raise RecordRefused(violations)
    eval_files = [(f"eval_{i}_{e.get('task')}.json", e) for i, (_, e) in enumerate(evals)]
    record = build_record(track, runs, result, name, date, notes, eval_files)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        for run in runs:
            for src in (run.json_path, run.log_path, run.json_path.with_suffix(".png")):
                if src.is_file():
                    shutil.copyfile(src, tmp / f"{run.run_id}{src.suffix}")
        for (file, _), (src, _) in zip(eval_files, evals):
            shutil.copyfile(src, tmp / file)
        (tmp / "record.json").write_text(json.dumps(record, indent=1) + "\n")
        (tmp / "config.yaml").write_text(render_yaml(record))
        (tmp / "README.md").write_text(render_readme(record))
        plot_curves(tmp / "curves.png", runs, record)
        tmp.rename(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder, result["warnings"]


def verify(folder) -> dict:
    """Re-check a stored record from its files alone -> its record.json. Raises RecordRefused on any problem."""
    folder = Path(folder)
    try:
        record = json.loads((folder / "record.json").read_text())
    except (OSError, ValueError) as e:
        raise RecordRefused([Violation("record", folder.name, f"no readable record.json ({e})")]) from None
    track = TRACKS.get(record.get("track"))
    if track is None:
        raise RecordRefused([Violation("record", folder.name, f"unknown track {record.get('track')!r}")])
    problems = []
    if record.get("rules") != json.loads(json.dumps(dataclasses.asdict(track))):
        problems.append(Violation("record", folder.name, f"the {track.name} track's rules in records.py differ from "
                                                         "the ones this record was checked against (a rule change "
                                                         "needs a new track)"))
    try:
        runs = [load_run(folder / r["files"]["json"]) for r in record.get("runs", [])]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise RecordRefused(problems + [Violation("record", folder.name, f"a run listed in record.json is "
                                                                         f"missing or unreadable ({e})")]) from None
    listed = {r["files"][k] for r in record.get("runs", []) for k in ("json", "log")}
    extra = sorted(p.name for p in folder.glob("*.json") if p.name != "record.json" and p.name not in listed
                   and p.name not in {e["file"] for e in record.get("evaluations", [])})
    if extra:
        problems.append(Violation("record", folder.name, f"files not in record.json: {', '.join(extra)}"))
    evals = [(e["file"], json.loads((folder / e["file"]).read_text())) for e in record.get("evaluations", [])]
    violations, result = check_runs(track, runs, [e for _, e in evals])
    if violations:
        raise RecordRefused(problems + violations)
    rebuilt = build_record(track, runs, result, record["name"], record["date"], record["notes"], evals)
    for key in sorted(set(rebuilt) | set(record)):
        if json.dumps(rebuilt.get(key), sort_keys=True) != json.dumps(record.get(key), sort_keys=True):
            problems.append(Violation("record", folder.name, f"record.json's {key!r} differs from what its runs give"))
    for file, text in (("README.md", render_readme(rebuilt)), ("config.yaml", render_yaml(rebuilt))):
        if not (folder / file).is_file() or (folder / file).read_text() != text:
            problems.append(Violation("record", folder.name, f"{file} differs from the one generated from the runs"))
    if problems:
        raise RecordRefused(problems)
    return record


# ---------------------------------------------------------------------------------------------------------------
# The leaderboard and the track table

def render_table(records: list[dict]) -> str:
    lines = []
    for track in TRACKS.values():
        mine = [r for r in records if r["track"] == track.name]
        lines += [f"**{track.name}** ({track.hardware}): {track.title}.", ""]
        if not mine:
            lines += ["No records yet.", ""]
            continue
        if track.kind == "time":
            mine.sort(key=lambda r: r["statistics"]["time_s"]["mean"])
            lines += ["| # | record | time to target (95% interval) | mean val loss at that step (p) | runs | "
                      "hardware | date |", "|---|---|---|---|---|---|---|"]
            for i, r in enumerate(mine, 1):
                t, loss = r["statistics"]["time_s"], r["statistics"]["loss"]
                lines.append(f"| {i} | [{r['name']}](records/{r['folder']}/README.md) | {_fmt_s(t['mean'])} "
                             f"({t['low']:,.1f}–{t['high']:,.1f}) | {loss['mean']:.4f} (p = {loss['p']:.2g}) | "
                             f"{t['n']} | {'; '.join(r['hardware'])} | {r['date']} |")
        else:
            mine.sort(key=lambda r: -r["statistics"]["score"]["mean"])
            lines += ["| # | record | score (95% interval) | per probe | runs | hardware | date |",
                      "|---|---|---|---|---|---|---|"]
            for i, r in enumerate(mine, 1):
                sc = r["statistics"]["score"]
                probes = ", ".join(f"{k} {v['mean']:.4f}" for k, v in r["statistics"]["per_probe"].items())
                lines.append(f"| {i} | [{r['name']}](records/{r['folder']}/README.md) | {sc['mean']:.4f} "
                             f"({sc['low']:.4f}–{sc['high']:.4f}) | {probes} | {sc['n']} | "
                             f"{'; '.join(r['hardware'])} | {r['date']} |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def render_tracks() -> str:
    """The rules and the track table for docs/TRAINING.md, from RULES and TRACKS."""
    # What an empty field means: an official constant still to be set, no rule, or not this kind of track.
    unset = ("valid_sha256", "val_mask_rate", "val_mask_seed", "val_masked_tokens")
    no_rule = {"world_size": "any", "gpu": "—", "max_usable_cpus": "—", "train_sha256": "not pinned"}

    def value(track: Track, field: str) -> str:
        v = getattr(track, field)
        if v is None or v == ():
            if field in unset or field == "target_loss" and track.kind == "time":
                return "*not set yet*"
            return no_rule.get(field, "—")
        if field == "probes":
            return ", ".join("/".join(p for p in probe if p) for probe in v)
        if isinstance(v, tuple):
            return ", ".join(f"`{x}`" for x in v)
        return f"`{v}`" if not isinstance(v, str) or field in ("data", "data_name") else v
    fields = [f.name for f in dataclasses.fields(Track) if f.name != "name"]
    lines = ["Rules, checked in this order (a refusal names the rule and the run):", ""]
    lines += [f"{i}. **{rule}**: {text}" for i, (rule, text) in enumerate(RULES.items(), 1)]
    lines += ["", "Warnings (the record is written, and shows them):", ""]
    lines += [f"- **{w}**: {text}" for w, text in WARNINGS.items()]
    lines += ["", "| | " + " | ".join(f"`{t}`" for t in TRACKS) + " |", "|---|" + "---|" * len(TRACKS)]
    for f in fields:
        lines.append(f"| `{f}` | " + " | ".join(value(t, f) for t in TRACKS.values()) + " |")
    return "\n".join(lines) + "\n"


def table(records_dir=ROOT / "records", readme=ROOT / "README.md", docs=ROOT / "docs" / "TRAINING.md") -> list[dict]:
    """Verify every record under records_dir, then rewrite the README's leaderboard and the docs' track table."""
    records_dir = Path(records_dir)
    folders = sorted(p for p in records_dir.iterdir() if (p / "record.json").is_file()) if records_dir.is_dir() else []
    records = [verify(folder) for folder in folders]
    for path, start, end, body in ((Path(readme), RECORDS_START, RECORDS_END, render_table(records)),
                                   (Path(docs), TRACKS_START, TRACKS_END, render_tracks())):
        path.write_text(config.replace_between(path.read_text(), start, end, body, str(path)))
    return records


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    verbs = parser.add_subparsers(dest="verb", required=True)
    sub = verbs.add_parser("submit", help="check runs against a track and write records/<date>_<name>/")
    sub.add_argument("runs", nargs="+", help="the runs' JSON summaries (logs/<run_id>.json; the .txt beside each)")
    sub.add_argument("--track", required=True, choices=list(TRACKS))
    sub.add_argument("--name", required=True, help="short name: lower-case letters, digits, '_' or '-'")
    sub.add_argument("--notes", default="", help="what changed and why (goes into the README)")
    sub.add_argument("--evals", nargs="*", default=[], help="representation track: probe.py --output JSONs")
    sub.add_argument("--records_dir", default=str(ROOT / "records"))
    sub.add_argument("--date", help="YYYY-MM-DD (default today)")
    ver = verbs.add_parser("verify", help="re-check a stored record from its files alone")
    ver.add_argument("folder")
    tab = verbs.add_parser("table", help="verify every record, then regenerate the README leaderboard and track table")
    tab.add_argument("--records_dir", default=str(ROOT / "records"))
    tab.add_argument("--readme", default=str(ROOT / "README.md"))
    tab.add_argument("--docs", default=str(ROOT / "docs" / "TRAINING.md"))
    args = parser.parse_args(argv)
    try:
        if args.verb == "submit":
            folder, warnings = submit(args.runs, args.track, args.name, args.records_dir, args.notes, args.date,
                                      args.evals)
            for w in warnings:
                print(f"warning: {w}", file=sys.stderr)
            print(f"record written: {folder}\n{headline(json.loads((folder / 'record.json').read_text()))}")
        elif args.verb == "verify":
            record = verify(args.folder)
            print(f"{args.folder}: verified ({record['track']} track)\n{headline(record)}")
        else:
            records = table(args.records_dir, args.readme, args.docs)
            print(f"{args.readme}: leaderboard of {len(records)} verified record(s); {args.docs}: track table")
    except RecordRefused as e:
        for v in e.violations:
            print(f"refused: {v}", file=sys.stderr)
        return 1
    except (ValueError, OSError) as e:
        print(f"records.py: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
