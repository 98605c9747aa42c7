"""Frozen-embedding probes of any checkpoint on FLIP tasks, next to a one-hot and an untrained-twin control.

    python probe.py --checkpoint CKPT --task gb1 --data_dir ../shared/data/flip [--with_controls] [--layers all]
    python probe.py --control onehot --task secondary_structure --data_dir ../shared/data/flip

One global recipe (the cramming rule, arXiv:2212.14034: set once, never per task): final-layer embeddings,
mean-pooled over residues for per-protein tasks and per residue for per-residue tasks, standardised on train; a
ridge (regression) or logistic-regression (classification) head per value of a fixed regularisation grid is fit
on train, the value that scores best on the validation rows is kept, and that head is scored on test. Controls
run the identical pipeline on one-hot residue features and on the checkpoint's architecture left untrained, so a
reader sees what pre-training added. docs/EVALUATE.md has the full protocol, the reference numbers and the caveats.

Everything behind the CLI takes a model object, so a notebook can call `run_probe` directly. Checkpoint loading,
device choice and the JSON output are evaluate.py's (the MLM and zero-shot tool), shared so both tools fail alike.
"""
import argparse
import csv
import dataclasses
import hashlib
import io
import json
import logging
import math
import sys
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

import shards
import vocab
from evaluate import REPO, EvalError, checkpoint_id, load_checkpoint, one_line, pick_device, write_json
from fasta import FastaError, parse_fasta
from validation import length_batches

log = logging.getLogger("probe")

DEFAULT_CACHE_DIR = REPO / "data" / "cache" / "embeddings"  # ignored by .gitignore (/data/cache/)


# ----------------------------------------------------------------------------------------------------------------
# Probe tasks (FLIP zips read in place; ../shared/data/flip/SOURCE.md describes every file)
# ----------------------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Partition:
    """Sequences and their targets: a float per sequence, or an int class per residue with -1 = not scored."""
    sequences: list[str]
    targets: list  # float (per-protein regression) or np.ndarray (L,) int64 (per-residue classes)


@dataclasses.dataclass
class Task:
    name: str
    split: str | None  # the FLIP split, for tasks that have several
    per_residue: bool
    kind: str  # "regression" (Spearman) or "classification" (accuracy)
    metric: str
    classes: str | None  # label alphabet of classification tasks, in class-index order
    train: Partition
    valid: Partition
    test: Partition
    notes: list[str]


GB1_SPLITS = ("one_vs_rest", "two_vs_rest", "three_vs_rest", "low_vs_high", "sampled")
MELTOME_VALID_FRACTION = 0.1  # of the draft's train rows, carved out (seeded) because the draft has no validation


def _open_zip(data_dir, name: str, task: str) -> zipfile.ZipFile:
    path = Path(data_dir) / name
    if not path.is_file():
        raise EvalError(f"{path} is missing: the {task} probe reads it (see ../shared/data/flip/SOURCE.md)")
    try:
        return zipfile.ZipFile(path)
    except zipfile.BadZipFile as err:
        raise EvalError(f"{path} is not a readable zip file: {err}") from err


def _zip_member(archive: zipfile.ZipFile, member: str) -> io.TextIOWrapper:
    try:
        return io.TextIOWrapper(archive.open(member), encoding="utf-8")
    except KeyError as err:
        raise EvalError(f"{archive.filename} has no member {member}") from err


def _zip_fasta(archive: zipfile.ZipFile, member: str) -> list:
    """The (header, residues) records of a FASTA member of a zip (`fasta.parse_fasta`, errors naming both)."""
    return list(parse_fasta(_zip_member(archive, member), f"{archive.filename}:{member}"))


def _fasta_attributes(header: str) -> tuple[str, dict]:
    """`ID SET=train VALIDATION=False` -> ("ID", {"SET": "train", "VALIDATION": "False"})."""
    name, *fields = header.split()
    return name, dict(field.split("=", 1) for field in fields)


def read_gb1(data_dir, split: str | None = None) -> Task:
    """FLIP GB1 (Wu et al. 2016): fitness of 4-site variants, Spearman. Rows with set=train and validation=True
    are the validation partition (FLIP's convention)."""
    split = split or "three_vs_rest"
    if split not in GB1_SPLITS:
        raise EvalError(f"unknown gb1 split {split!r}; choose from {', '.join(GB1_SPLITS)}")
    archive = _open_zip(data_dir, "gb1_splits.zip", "gb1")
    parts = {"train": Partition([], []), "valid": Partition([], []), "test": Partition([], [])}
    for row in csv.DictReader(_zip_member(archive, f"splits/{split}.csv")):
        part = "test" if row["set"] == "test" else ("valid" if row["validation"] == "True" else "train")
        parts[part].sequences.append(row["sequence"])
        parts[part].targets.append(float(row["target"]))
    return Task("gb1", split, False, "regression", "spearman", None, **parts, notes=[])


def _per_residue_task(data_dir, zip_name: str, task: str, classes: str, resolved_mask: bool) -> dict:
    """FLIP per-residue layout: labels + SET/VALIDATION in splits/sampled.fasta, residues in sequences.fasta,
    optionally a 0/1 'resolved' string per residue in mask.fasta (0 -> label -1, not trained on or scored)."""
    archive = _open_zip(data_dir, zip_name, task)
    residues = dict(_zip_fasta(archive, "splits/sequences.fasta"))
    masks = dict(_zip_fasta(archive, "splits/mask.fasta")) if resolved_mask else {}
    class_index = np.full(256, -1, dtype=np.int64)
    class_index[np.frombuffer(classes.encode(), dtype=np.uint8)] = np.arange(len(classes))
    parts = {"train": Partition([], []), "valid": Partition([], []), "test": Partition([], [])}
    for header, label_string in _zip_fasta(archive, "splits/sampled.fasta"):
        name, attributes = _fasta_attributes(header)
        sequence = residues[name]
        labels = class_index[np.frombuffer(label_string.encode(), dtype=np.uint8)]
        if labels.size != len(sequence) or (labels < 0).any():
            raise EvalError(f"{archive.filename}: labels of {name} do not match its sequence or alphabet {classes}")
        if resolved_mask:
            labels[np.frombuffer(masks[name].encode(), dtype=np.uint8) == ord("0")] = -1
        part = "test" if attributes["SET"] == "test" else ("valid" if attributes["VALIDATION"] == "True" else "train")
        parts[part].sequences.append(sequence)
        parts[part].targets.append(labels)
    return parts


def read_secondary_structure(data_dir) -> Task:
    """NetSurfP-2.0 3-state secondary structure (FLIP): Q3 over resolved residues (mask.fasta == 1)."""
    parts = _per_residue_task(data_dir, "secondary_structure_splits.zip", "secondary_structure", "CHE", True)
    return Task("secondary_structure", None, True, "classification", "q3", "CHE", **parts,
                notes=["unresolved residues (mask.fasta = 0) are neither trained on nor scored"])


def read_conservation(data_dir) -> Task:
    """ConSurf-DB conservation class 1..9 per residue (FLIP): accuracy (Q9)."""
    parts = _per_residue_task(data_dir, "conservation_splits.zip", "conservation", "123456789", False)
    return Task("conservation", None, True, "classification", "q9", "123456789", **parts, notes=[])


def read_meltome_draft(data_dir, seed: int = 0) -> Task:
    """Melting temperature (deg C), FLIP meltome DRAFT 2021-07-29 clustered_task.csv, Spearman.

    Not the published meltome split: its numbers are not comparable to published meltome results. The draft has
    no validation rows, so a seeded MELTOME_VALID_FRACTION of its train rows becomes the validation partition."""
    archive = _open_zip(data_dir, "meltome_draft_2021-07-29_tasks.zip", "meltome_draft")
    rows = list(csv.DictReader(_zip_member(archive, "tasks/clustered_task.csv")))
    train_rows = [r for r in rows if r["set"] == "train"]
    n_valid = round(MELTOME_VALID_FRACTION * len(train_rows))
    valid_index = set(seeded(seed, "meltome_draft valid").permutation(len(train_rows))[:n_valid].tolist())

    def partition(selected):
        return Partition([r["sequence"] for r in selected], [float(r["target"]) for r in selected])

    return Task("meltome_draft", None, False, "regression", "spearman", None,
                train=partition([r for i, r in enumerate(train_rows) if i not in valid_index]),
                valid=partition([r for i, r in enumerate(train_rows) if i in valid_index]),
                test=partition([r for r in rows if r["set"] == "test"]),
                notes=["DRAFT split (FLIP 2021-07-29 clustered_task): not comparable to published meltome numbers",
                       f"validation = {n_valid} train rows drawn with seed {seed}"])


TASKS = ("gb1", "secondary_structure", "conservation", "meltome_draft")


def load_task(name: str, data_dir, split: str | None = None, seed: int = 0) -> Task:
    """The train / valid / test partitions of one probe task. Only gb1 has selectable splits; `seed` draws the
    meltome_draft validation rows."""
    if name not in TASKS:
        raise EvalError(f"unknown task {name!r}; choose from {', '.join(TASKS)}")
    if split is not None and name != "gb1":
        raise EvalError(f"task {name} has a single split; --split applies to gb1 only")
    if not Path(data_dir).is_dir():
        raise EvalError(f"data directory {data_dir} does not exist (expected ../shared/data/flip)")
    if name == "gb1":
        return read_gb1(data_dir, split)
    if name == "meltome_draft":
        return read_meltome_draft(data_dir, seed)
    return read_secondary_structure(data_dir) if name == "secondary_structure" else read_conservation(data_dir)


# Published frozen-embedding numbers on the same splits (%), Schmirler, Heinzinger & Rost 2024, Nat Commun,
# doi:10.1038/s41467-024-51844-2, Table S3/S5 "pre-trained embedding aggregated" (mean ± spread over runs);
# source data: github.com/RSchmirler/data-repo_plm-finetune-eval (Table S3/S5 CSVs, CC BY 4.0). No published ESM2
# numbers exist for conservation or meltome_draft.
PUBLISHED = {
    ("gb1", "three_vs_rest"): {"ESM2-8M": (81.8, 0.4), "ESM2-35M": (82.7, 0.3), "ESM2-150M": (83.3, 1.0),
                               "ESM2-650M": (85.7, 0.4)},
    ("secondary_structure", None): {"ESM2-8M": (75.3, 0.1), "ESM2-35M": (78.2, 0.0), "ESM2-150M": (82.2, 0.1),
                                    "ESM2-650M": (84.7, 0.1)},
}


# ----------------------------------------------------------------------------------------------------------------
# Subsampling (seeded; every use is logged and flagged in the result)
# ----------------------------------------------------------------------------------------------------------------

RESIDUE_CAP = 100_000  # scored residues kept for fitting per-residue heads (train and valid each), so a CPU probe ends


def seeded(seed: int, purpose: str) -> np.random.Generator:
    """One independent generator per purpose, so that e.g. --max_test never changes which train rows are drawn."""
    return np.random.default_rng([seed, int.from_bytes(hashlib.sha256(purpose.encode()).digest()[:8], "little")])


def subsample(part: Partition, n: int | None, rng: np.random.Generator) -> Partition:
    """At most n items, drawn without replacement and kept in their original order."""
    if n is None or n >= len(part.sequences):
        return part
    keep = np.sort(rng.permutation(len(part.sequences))[:n])
    return Partition([part.sequences[i] for i in keep], [part.targets[i] for i in keep])


def cap_residues(part: Partition, cap: int, rng: np.random.Generator) -> Partition:
    """Whole sequences in a seeded random order until >= cap scored residues: only the kept sequences are embedded,
    which is where the time goes."""
    scored = np.array([np.count_nonzero(t >= 0) for t in part.targets])
    if scored.sum() <= cap:
        return part
    order = rng.permutation(len(scored))
    n_keep = int(np.searchsorted(np.cumsum(scored[order]), cap) + 1)
    keep = np.sort(order[:n_keep])
    return Partition([part.sequences[i] for i in keep], [part.targets[i] for i in keep])


# ----------------------------------------------------------------------------------------------------------------
# Features: chunked, length-batched embedding with a disk cache
# ----------------------------------------------------------------------------------------------------------------

Embedder = Callable[[list[str]], list[np.ndarray]]  # residue strings -> per-residue (L_i, D) float32 arrays


def model_embedder(model, layer: int | None, batch_tokens: int, device) -> Embedder:
    """Per-residue embeddings of `model` (its `embed` API: eval mode, no grad, <cls>/<eos> removed; it moves the
    model to `device` and restores train/eval mode), as float32 numpy."""
    def embed(pieces: list[str]) -> list[np.ndarray]:
        per_residue, _ = model.embed(pieces, layer=layer, max_tokens=batch_tokens, device=device)
        return [h.float().cpu().numpy() for h in per_residue]
    return embed


ONEHOT_DIM = len(vocab.RESIDUES)  # 25 residue letters; one column per vocabulary residue id 4..28


def onehot_embedder(pieces: list[str]) -> list[np.ndarray]:
    """The one-hot control: each residue as a 25-dim indicator of its letter (all zero for <unk>, '.', '-')."""
    out = []
    for piece in pieces:
        ids, _ = vocab.encode(piece)
        features = np.zeros((ids.size, ONEHOT_DIM), dtype=np.float32)
        first = vocab.TOKEN_TO_ID[vocab.RESIDUES[0]]
        known = (ids >= first) & (ids < first + ONEHOT_DIM)
        features[np.flatnonzero(known), ids[known].astype(np.int64) - first] = 1.0
        out.append(features)
    return out


def chunk_sequence(sequence: str, max_residues: int) -> list[str]:
    """The fewest near-equal consecutive pieces of <= max_residues residues (one piece if it already fits).

    The global rule for sequences longer than the context: every piece is embedded on its own and the per-residue
    embeddings are concatenated back, so per-residue tasks see every residue and pooling averages all of them."""
    n_pieces = max(1, math.ceil(len(sequence) / max_residues))
    bounds = np.linspace(0, len(sequence), n_pieces + 1).round().astype(int)
    return [sequence[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def embed_sequences(embedder: Embedder, sequences: list[str], *, per_residue: bool, max_length: int,
                    batch_tokens: int, desc: str = "embed", progress: bool = False):
    """Features of every sequence: (N, D) mean-pooled float32, or a list of (L_i, D) per-residue arrays.

    Sequences are cut into pieces of <= max_length - 2 residues (room for <cls>/<eos>), sorted by length and
    sent to the embedder in groups of <= batch_tokens padded tokens. Pooling = mean over all residues."""
    pieces, owner = [], []
    for i, sequence in enumerate(sequences):
        for piece in chunk_sequence(sequence, max_length - 2):
            pieces.append(piece)
            owner.append(i)
    n_long = sum(len(sequence) > max_length - 2 for sequence in sequences)
    if n_long:
        log.info("%s: %d sequences longer than %d residues embedded as %d pieces", desc, n_long, max_length - 2,
                 n_long + len(pieces) - len(sequences))
    piece_features = [None] * len(pieces)
    for group in tqdm(length_batches([len(p) + 2 for p in pieces], batch_tokens), desc=desc, unit="batch",
                      disable=not progress):
        for i, features in zip(group, embedder([pieces[i] for i in group])):
            if features.shape[0] != len(pieces[i]):
                raise EvalError(f"embedder returned {features.shape[0]} rows for a {len(pieces[i])}-residue piece")
            piece_features[i] = features
    per_sequence = [[] for _ in sequences]
    for i, features in zip(owner, piece_features):
        per_sequence[i].append(features)
    per_sequence = [np.concatenate(parts) for parts in per_sequence]
    if per_residue:
        return per_sequence
    return np.stack([features.mean(axis=0) for features in per_sequence])


def _source_hash(module_name: str) -> str:
    """sha256 of a module's source file: model code changes must invalidate cached embeddings."""
    return shards.sha256_file(sys.modules[module_name].__file__)


def cached_features(cache_dir, identity: dict, compute: Callable, *, per_residue: bool):
    """`compute()` once per `identity` (a JSON-able dict naming model, code, task, partition, options and the
    sequences' hash): stored as .npz under cache_dir, loaded on later calls.

    Measured to pay (docs/EVALUATE.md, "Embedding cache"): a 450-sequence GB1 probe of an ESM2-8M-shaped model on
    this CPU took 82 s uncached, 81 s writing the cache and 0.03 s reading it back."""
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:24]
    path = Path(cache_dir) / f"{identity['task']}_{identity['partition']}_{key}.npz"
    if path.is_file():
        with np.load(path) as stored:
            log.info("embedding cache hit: %s", path)
            if per_residue:
                return np.split(stored["features"], np.cumsum(stored["lengths"])[:-1])
            return stored["features"]
    features = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        if per_residue:
            np.savez(f, features=np.concatenate(features), lengths=np.array([x.shape[0] for x in features]))
        else:
            np.savez(f, features=features)
    tmp.replace(path)  # atomic: a killed run never leaves a truncated cache file under the final name
    return features


def _sequences_hash(sequences: list[str]) -> str:
    digest = hashlib.sha256()
    for sequence in sequences:
        digest.update(sequence.encode() + b"\n")
    return digest.hexdigest()


# ----------------------------------------------------------------------------------------------------------------
# The probe recipe
# ----------------------------------------------------------------------------------------------------------------

# Regularisation strengths λ tried for every task, strongest first. Both heads minimise a loss summed over
# training items plus a penalty, so λ means the same in both: ridge alpha = λ, logistic C = 1/λ (sklearn).
REGULARISATION_GRID = (1e5, 1e4, 1e3, 1e2, 1e1, 1.0, 1e-1)
RANDOM_INIT_SEED = 0  # the untrained twin's initialisation


def score(kind: str, y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Spearman rho (regression) or accuracy (classification); nan when Spearman is undefined (constant input)."""
    if kind == "classification":
        return float(np.mean(y_true == y_pred))
    from scipy.stats import spearmanr

    if np.ptp(y_pred) == 0 or np.ptp(y_true) == 0:
        return float("nan")
    return float(spearmanr(y_true, y_pred).statistic)


def fit_probe(kind: str, x_train, y_train, x_valid, y_valid, x_test, y_test) -> dict:
    """Standardise on train, fit one head per λ on train, keep the best on valid (ties -> stronger λ), score on test.

    x_*: (N, D) float features; y_*: (N,) float targets or int classes. Returns test `score`, chosen `lambda`
    and the validation score of every λ."""
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits  # a scikit-learn dependency

    scaler = StandardScaler().fit(x_train)
    x_train, x_valid, x_test = (scaler.transform(x) for x in (x_train, x_valid, x_test))
    best, valid_scores = None, {}
    # One BLAS thread: these fits are small, and on a shared machine multi-threaded BLAS made a 10k x 32 logistic
    # fit 20x slower (1.5 s vs 0.08 s, load 11 on 2 cores); 100k x 320 took 0.5-1.3 s with 1 thread, 2.6-5.7 s with 2.
    with threadpool_limits(limits=1):
        for lam in REGULARISATION_GRID:
            head = Ridge(alpha=lam) if kind == "regression" else LogisticRegression(C=1.0 / lam, max_iter=2000)
            head.fit(x_train, y_train)
            valid_scores[lam] = score(kind, y_valid, head.predict(x_valid))
            if best is None or valid_scores[lam] > valid_scores[best[0]] or math.isnan(valid_scores[best[0]]):
                best = (lam, head)
    lam, head = best
    return {"score": score(kind, y_test, head.predict(x_test)), "lambda": lam, "valid_score": valid_scores[lam],
            "valid_scores": {str(k): v for k, v in valid_scores.items()}}


def run_probe(model, task: str | Task, data_dir=None, *, control: str | None = None, split: str | None = None,
              layer: int | None = None, max_train: int | None = None, max_test: int | None = None, seed: int = 0,
              max_length: int = 1024, batch_tokens: int = 16384, device=None, cache_dir=None,
              model_id: str | None = None, progress: bool = False) -> dict:
    """Frozen-embedding probe of `model` (or of a control) on one task, with the global recipe.

    task: a name from TASKS (read from data_dir) or a `Task`. control: None (the model), "onehot" (model may be
    None) or "random_init" (the model's architecture, `init_weights()` under RANDOM_INIT_SEED). max_train caps the
    train and valid sequences, max_test the test sequences (seeded; the result is flagged `subsampled`).
    Per-residue tasks also keep ~RESIDUE_CAP scored residues of train and valid (whole sequences, seeded).
    cache_dir: where embeddings are cached (None = no cache); caching a trained model needs `model_id`
    (e.g. `checkpoint_id(path)`). Returns a JSON-able dict: score (fraction), metric, lambda, counts, notes.
    """
    if control not in (None, "onehot", "random_init"):
        raise EvalError(f"unknown control {control!r}; use onehot or random_init")
    if control != "onehot" and model is None:
        raise EvalError("run_probe needs a model unless control='onehot'")
    if control == "onehot" and layer is not None:
        raise EvalError("--layer does not apply to the onehot control (it has no layers)")
    if control is None and cache_dir is not None and model_id is None:
        raise EvalError("caching embeddings of a model needs model_id (e.g. checkpoint_id(path)); "
                        "pass cache_dir=None to skip the cache")
    if max_length < 3:
        raise EvalError(f"max_length must be >= 3 (<cls>, a residue, <eos>), got {max_length}")
    task = task if isinstance(task, Task) else load_task(task, data_dir, split, seed)
    notes = list(task.notes)

    train, valid, test = (subsample(task.train, max_train, seeded(seed, "train")),
                          subsample(task.valid, max_train, seeded(seed, "valid")),
                          subsample(task.test, max_test, seeded(seed, "test")))
    subsampled = (len(train.sequences), len(valid.sequences), len(test.sequences)) != \
        (len(task.train.sequences), len(task.valid.sequences), len(task.test.sequences))
    if subsampled:
        notes.append(f"SUBSAMPLED with --max_train {max_train} / --max_test {max_test} (seed {seed}): "
                     "not comparable to full-task numbers")
    if task.per_residue:
        train = cap_residues(train, RESIDUE_CAP, seeded(seed, "train residues"))
        valid = cap_residues(valid, RESIDUE_CAP, seeded(seed, "valid residues"))
    for label, part, full in (("train", train, task.train), ("valid", valid, task.valid), ("test", test, task.test)):
        residues = f" ({sum(int((t >= 0).sum()) for t in part.targets)} scored residues)" if task.per_residue else ""
        log.info("%s %s (%s): %d of %d sequences%s", task.name, label, control or "model", len(part.sequences),
                 len(full.sequences), residues)

    embedder, identity = _features_source(model, control, layer, batch_tokens, device, model_id)
    features = {}
    for label, part in (("train", train), ("valid", valid), ("test", test)):
        def compute(part=part, label=label):
            return embed_sequences(embedder, part.sequences, per_residue=task.per_residue, max_length=max_length,
                                   batch_tokens=batch_tokens, desc=f"{task.name} {label}", progress=progress)
        if cache_dir is None or identity is None:
            features[label] = compute()
        else:
            key = {**identity, "task": task.name, "split": task.split, "partition": label, "layer": layer,
                   "max_length": max_length, "per_residue": task.per_residue,
                   "sequences": _sequences_hash(part.sequences)}
            features[label] = cached_features(cache_dir, key, compute, per_residue=task.per_residue)

    arrays = {label: _design_matrix(features[label], part.targets, task.per_residue)
              for label, part in (("train", train), ("valid", valid), ("test", test))}
    result = fit_probe(task.kind, *arrays["train"], *arrays["valid"], *arrays["test"])
    counts = {f"n_{label}": len(part.sequences) for label, part in (("train", train), ("valid", valid), ("test", test))}
    if task.per_residue:
        counts.update({f"n_{label}_residues": int(arrays[label][1].size) for label in arrays})
        notes.append(f"per-residue head fit on {counts['n_train_residues']} train / {counts['n_valid_residues']} "
                     f"valid residues (whole sequences drawn with seed {seed} up to a cap of {RESIDUE_CAP}), "
                     f"scored on {counts['n_test_residues']} test residues")
    return {"task": task.name, "split": task.split, "features": control or "model", "metric": task.metric,
            **result, **counts, "dim": int(arrays["train"][0].shape[1]), "subsampled": subsampled,
            "layer": layer, "seed": seed, "notes": notes}


def _features_source(model, control, layer, batch_tokens, device, model_id) -> tuple[Embedder, dict | None]:
    """The embedder for the requested features and the identity that keys their cache (None = not cached)."""
    if control == "onehot":
        return onehot_embedder, None  # computing one-hot features is cheaper than reading them back
    from checkpoint import unwrap

    model = unwrap(model)
    if layer is not None and not 0 <= layer <= model.config.num_hidden_layers:
        raise EvalError(f"--layer {layer} does not exist: the model has layers 0..{model.config.num_hidden_layers}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    code = _source_hash(type(model).__module__)
    if control == "random_init":
        with torch.random.fork_rng(devices=[]):  # leave the caller's RNG stream untouched
            torch.manual_seed(RANDOM_INIT_SEED)
            twin = type(model)(model.config)
            twin.init_weights()
        model = twin.to(device).eval()
        identity = {"model": "random_init", "seed": RANDOM_INIT_SEED, "code": code,
                    "config": dataclasses.asdict(model.config)}
    else:
        identity = {"model": model_id, "code": code} if model_id is not None else None
    return model_embedder(model, layer, batch_tokens, device), identity


def _design_matrix(features, targets, per_residue: bool) -> tuple[np.ndarray, np.ndarray]:
    """(X, y) for the head: pooled rows with their targets, or every scored residue (label >= 0) with its class."""
    if not per_residue:
        return np.asarray(features, dtype=np.float32), np.asarray(targets, dtype=np.float64)
    x, y = np.concatenate(features), np.concatenate(targets)
    return x[y >= 0], y[y >= 0]


def format_probe(results: list[dict]) -> str:
    """The stdout table of `probe.py`: one row per feature set (model and controls), published numbers
    of the same split, then every note (draft split, subsampling, residue counts) once."""
    first = results[0]
    split = f" split {first['split']}" if first["split"] else ""
    lines = [f"probe {first['task']}{split}: {first['metric']} on test, % (head: "
             f"{'ridge' if first['metric'] == 'spearman' else 'logistic regression'}, λ chosen on valid)",
             f"  {'features':<13}{'score':>8}{'λ':>9}{'train':>8}{'valid':>7}{'test':>7}"]
    for r in results:
        value = "nan" if math.isnan(r["score"]) else f"{100 * r['score']:.1f}"
        lines.append(f"  {r['features']:<13}{value:>8}{r['lambda']:>9g}{r['n_train']:>8}{r['n_valid']:>7}"
                     f"{r['n_test']:>7}")
    published = PUBLISHED.get((first["task"], first["split"]))
    if published:
        lines.append("  published frozen ESM2 (Schmirler et al. 2024, same split): " +
                     ", ".join(f"{name} {mean} ± {err}" for name, (mean, err) in published.items()))
    else:
        lines.append("  no published ESM2 number on this split")
    lines += [f"  note: {note}" for note in dict.fromkeys(n for r in results for n in r["notes"])]
    return "\n".join(lines)


def cmd_probe(args) -> dict:
    device = pick_device(args.device)
    model, model_id = None, None
    if args.checkpoint is not None:
        model, model_id = load_checkpoint(args.checkpoint, device), checkpoint_id(args.checkpoint)
    task = load_task(args.task, args.data_dir, args.split, args.seed)
    by_layer = None
    if args.layers:  # every requested layer of the model; the headline is the layer best on validation
        layers = probe_layers(args.layers, model.config.num_hidden_layers)
        by_layer = [run_probe(model, task, layer=layer, max_train=args.max_train, max_test=args.max_test,
                              seed=args.seed, max_length=args.max_length, batch_tokens=args.batch_tokens,
                              device=device, cache_dir=args.cache_dir or None, model_id=model_id, progress=True)
                    for layer in layers]
        print(format_layers(by_layer))
        args.layer = max(by_layer, key=lambda r: r["valid_score"])["layer"]
    variants = [None, "onehot", "random_init"] if args.with_controls else [args.control]
    results = [run_probe(model, task, control=control, layer=None if control == "onehot" else args.layer,
                         max_train=args.max_train, max_test=args.max_test, seed=args.seed,
                         max_length=args.max_length, batch_tokens=args.batch_tokens, device=device,
                         cache_dir=args.cache_dir or None, model_id=model_id, progress=True)
               if not (control is None and by_layer) else next(r for r in by_layer if r["layer"] == args.layer)
               for control in variants]
    print(format_probe(results))
    published = {name: {"mean": mean, "error": error}
                 for name, (mean, error) in PUBLISHED.get((task.name, task.split), {}).items()}
    return {"checkpoint": args.checkpoint, "checkpoint_sha256": model_id, "task": task.name, "split": task.split,
            "results": results, "published_frozen_percent": published, "layers": by_layer,
            "chosen_layer": args.layer if by_layer else None}


def probe_layers(spec: str, num_layers: int) -> list[int | None]:
    """'all' -> [0, 1, …, L, None]; '2,4,final' -> [2, 4, None] (None = the final normed output)."""
    if spec == "all":
        return list(range(num_layers + 1)) + [None]
    out = []
    for part in spec.split(","):
        part = part.strip()
        if part == "final":
            out.append(None)
        elif part.isdigit() and int(part) <= num_layers:
            out.append(int(part))
        else:
            raise EvalError(f"--layers: {part!r} is not a layer (0..{num_layers}, 'final' or 'all')")
    return out


def format_layers(results: list[dict]) -> str:
    """Per-layer probe table; the row marked * has the best validation score (the one reported as headline)."""
    best = max(results, key=lambda r: r["valid_score"])
    lines = [f"{results[0]['task']} ({results[0]['split']}), {results[0]['metric']} by layer "
             "(0 = embeddings, final = normed output)", f"{'layer':>7} {'valid':>8} {'test':>8}"]
    for r in results:
        name = "final" if r["layer"] is None else str(r["layer"])
        lines.append(f"{name:>7} {r['valid_score']:>8.4f} {r['score']:>8.4f}" + (" *" if r is best else ""))
    return "\n".join(lines)



# ----------------------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------------------

def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", help="checkpoint directory (not needed for --control onehot)")
    parser.add_argument("--task", required=True, help=f"one of {', '.join(TASKS)}")
    parser.add_argument("--data_dir", required=True, help="directory of the FLIP zips (../shared/data/flip)")
    parser.add_argument("--split", help=f"gb1 only: one of {', '.join(GB1_SPLITS)} (default three_vs_rest)")
    controls = parser.add_mutually_exclusive_group()
    controls.add_argument("--control", choices=("onehot", "random_init"), help="probe a control instead")
    controls.add_argument("--with_controls", action="store_true", help="checkpoint, onehot and random_init")
    parser.add_argument("--layer", type=int, help="hidden layer to embed (default: the final normed output)")
    parser.add_argument("--layers", help="probe several layers: 'all' (0 = embeddings … L, and the final normed "
                        "output) or a comma list like 2,4,final; the headline layer is the best on validation")
    parser.add_argument("--max_train", type=int, help="cap train and valid sequences (quick runs; flagged)")
    parser.add_argument("--max_test", type=int, help="cap test sequences (quick runs; flagged)")
    parser.add_argument("--seed", type=int, default=0, help="seed of subsampling and the meltome_draft valid set")
    parser.add_argument("--max_length", type=int, default=1024,
                        help="tokens per embedded piece; longer sequences are embedded in pieces")
    parser.add_argument("--batch_tokens", type=int, default=16384, help="padded tokens per embed call")
    parser.add_argument("--cache_dir", default=str(DEFAULT_CACHE_DIR), help="embedding cache ('' = no cache)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    parser.add_argument("--output", help="write the results as JSON here")
    args = parser.parse_args(argv)
    if args.checkpoint is None and args.control != "onehot":
        parser.error("--checkpoint is required (only --control onehot runs without one)")
    if args.control == "onehot" and (args.checkpoint or args.layer is not None or args.layers):
        parser.error("--control onehot uses neither --checkpoint nor --layer/--layers")
    if args.layers and args.layer is not None:
        parser.error("give --layer or --layers, not both")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        payload = cmd_probe(args)
    except (EvalError, FastaError, FileNotFoundError) as err:
        print(f"probe.py: error: {one_line(err)}", file=sys.stderr)
        return 1
    if args.output:
        write_json(args.output, payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
