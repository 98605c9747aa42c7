"""Score any checkpoint: masked-LM metrics with fixed masks, and frozen-embedding probes on FLIP tasks.

    python evaluate.py mlm   --checkpoint CKPT (--fasta FILE | --data_dir DIR --data_name NAME --split S)
    python evaluate.py probe --checkpoint CKPT --task gb1 --data_dir ../shared/data/flip [--with_controls]
    python evaluate.py zeroshot --checkpoint CKPT --dms_dir ../shared/data/proteingym_dev    (zeroshot.py)

Protocols (docs/EVALUATE.md has the full text, the reference numbers and the caveats):
- MLM: each sequence is cropped to its first `max_length` tokens, then `validation.fixed_mask` picks the masked
  positions (a pure function of seed, sequence and rate, so every model sees the same masks) and all of them
  become <mask>. Loss is the token-weighted mean cross-entropy over every masked token of the set; accuracy,
  weighted precision / recall / F1 and MCC come from one confusion matrix over the masked tokens.
- Probes, one global recipe (the cramming rule, arXiv:2212.14034: set once, never per task): final-layer
  embeddings, mean-pooled over residues for per-protein tasks and per residue for per-residue tasks,
  standardised on train; a ridge (regression) or logistic-regression (classification) head per value of a
  fixed regularisation grid is fit on train, the value that scores best on the validation rows is kept, and
  that head is scored on test. Controls run the identical pipeline on one-hot residue features and on the
  checkpoint's architecture left untrained, so a reader sees what pre-training added.

Everything behind the CLI takes a model object, so `train.py` or a notebook can call `mlm_metrics` and
`run_probe` directly.
"""
import argparse
import csv
import dataclasses
import gzip
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
import torch.nn.functional as F
from tqdm import tqdm

import shards
import vocab
from validation import fixed_mask
from zeroshot import MutationError

log = logging.getLogger("evaluate")

REPO = Path(__file__).resolve().parent
DEFAULT_CACHE_DIR = REPO / "data" / "cache" / "embeddings"  # ignored by .gitignore (/data/cache/)


class EvalError(ValueError):
    """Bad input to the evaluation (unknown task, missing file, empty FASTA, incompatible checkpoint).

    The message names the offending thing; the CLI prints it as one line and exits non-zero."""


# ----------------------------------------------------------------------------------------------------------------
# Inputs: device, checkpoint, FASTA
# ----------------------------------------------------------------------------------------------------------------

def pick_device(name: str = "auto") -> torch.device:
    """`auto` -> cuda when available, else cpu. Asking for cuda without a GPU is an error, not a fallback."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise EvalError(f"--device {name} was requested but CUDA is not available on this machine")
    if name != "cpu" and not name.startswith("cuda"):
        raise EvalError(f"unknown device {name!r}: use auto, cpu or cuda[:N]")
    return torch.device(name)


def load_checkpoint(path, device) -> torch.nn.Module:
    """`checkpoint.load_model`, with every way a checkpoint can be incompatible turned into an EvalError naming it."""
    from checkpoint import load_model  # imports model.py, which only this path and run_probe's twin need

    try:
        return load_model(path, device)
    except FileNotFoundError as err:
        raise EvalError(str(err)) from err
    except (ValueError, TypeError, RuntimeError) as err:  # unknown config keys, bad values, shape mismatches
        raise EvalError(f"checkpoint {path} is incompatible with this model.py: {_one_line(err)}") from err


def checkpoint_id(path) -> str:
    """sha256 of the checkpoint's weights file: what the embedding cache keys a trained model by."""
    from checkpoint import MODEL_FILE

    return shards.sha256_file(Path(path) / MODEL_FILE)


def read_fasta(path) -> list[tuple[str, str]]:
    """(header without '>', sequence) for every record of a FASTA file, plain or .gz; multi-line records joined."""
    path = Path(path)
    if not path.is_file():
        raise EvalError(f"FASTA file {path} does not exist")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:
        return _parse_fasta(f)


def _parse_fasta(lines) -> list[tuple[str, str]]:
    records, header, parts = [], None, []
    for line in lines:
        line = line.strip()
        if line.startswith(">"):
            if header is not None:
                records.append((header, "".join(parts)))
            header, parts = line[1:], []
        elif line and header is not None:
            parts.append(line)
    if header is not None:
        records.append((header, "".join(parts)))
    return records


def _one_line(err: Exception) -> str:
    return " ".join(str(err).split())[:500]


# ----------------------------------------------------------------------------------------------------------------
# Classification metrics from a confusion matrix (the metric set of the published ESM2 MLM benchmark)
# ----------------------------------------------------------------------------------------------------------------

def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """(n_classes, n_classes) int64 counts; row = true class, column = predicted class."""
    index = np.asarray(y_true, dtype=np.int64) * n_classes + np.asarray(y_pred, dtype=np.int64)
    return np.bincount(index, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def classification_metrics(confusion: np.ndarray) -> dict:
    """Accuracy, support-weighted precision / recall / F1, and multiclass MCC of a confusion matrix.

    Weighted = each class's score times its share of the true labels (sklearn's `average="weighted"`); a class
    never predicted has precision 0 (sklearn's `zero_division=0`), so weighted recall equals accuracy.
    MCC is Gorodkin's multiclass form (doi:10.1016/j.compbiolchem.2004.09.006), sklearn's `matthews_corrcoef`:
        (c·s − Σ_k p_k t_k) / sqrt((s² − Σ_k p_k²)(s² − Σ_k t_k²)),
    with c correct, s total, p_k predicted and t_k true counts of class k; 0 when a factor of the denominator is 0.
    """
    cm = np.asarray(confusion, dtype=np.float64)
    total = cm.sum()
    if total == 0:
        raise EvalError("no labelled items to score (empty confusion matrix)")
    correct = np.trace(cm)
    true_counts, pred_counts, hits = cm.sum(axis=1), cm.sum(axis=0), np.diag(cm)
    precision = np.divide(hits, pred_counts, out=np.zeros_like(hits), where=pred_counts > 0)
    recall = np.divide(hits, true_counts, out=np.zeros_like(hits), where=true_counts > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(hits),
                   where=(precision + recall) > 0)
    weight = true_counts / total
    denominator = math.sqrt((total**2 - (pred_counts**2).sum()) * (total**2 - (true_counts**2).sum()))
    mcc = (correct * total - (pred_counts * true_counts).sum()) / denominator if denominator > 0 else 0.0
    return {"accuracy": float(correct / total), "precision": float(weight @ precision),
            "recall": float(weight @ recall), "f1": float(weight @ f1), "mcc": float(mcc)}


# ----------------------------------------------------------------------------------------------------------------
# Masked-LM metrics
# ----------------------------------------------------------------------------------------------------------------

def length_batches(lengths, batch_tokens: int) -> list[list[int]]:
    """Indices grouped longest first so that each group, padded to its longest member, holds <= batch_tokens.

    An item longer than batch_tokens gets a group of its own."""
    lengths = np.asarray(lengths)
    batches, current, width = [], [], 0
    for i in np.argsort(-lengths, kind="stable").tolist():
        if current and (len(current) + 1) * width > batch_tokens:
            batches.append(current)
            current = []
        if not current:
            width = int(lengths[i])
        current.append(i)
    if current:
        batches.append(current)
    return batches


def prepare_mlm_sequences(sequences, max_length: int) -> tuple[list[np.ndarray], int]:
    """Strings (encoded as `<cls> residues <eos>`) or token arrays (taken as they are, specials included), each
    cropped to its first `max_length` tokens. Returns (uint8 arrays, number of sequences cropped)."""
    if max_length < 3:
        raise EvalError(f"max_length must be >= 3 (<cls>, a residue, <eos>), got {max_length}")
    out, n_cropped = [], 0
    for seq in sequences:
        tokens = vocab.encode_with_specials(seq) if isinstance(seq, str) else np.asarray(seq, dtype=np.uint8)
        if tokens.size > max_length:
            tokens, n_cropped = tokens[:max_length], n_cropped + 1
        out.append(tokens)
    return out, n_cropped


@torch.inference_mode()
def mlm_metrics(model, sequences, *, mask_rate: float = 0.15, seed: int = 0, max_length: int = 1024,
                batch_tokens: int = 16384, device=None, progress: bool = False) -> dict:
    """Masked-token metrics of `model` on `sequences` (list of amino-acid strings or of token arrays with specials).

    Every sequence is cropped to `max_length` tokens, masked with `validation.fixed_mask(tokens, mask_rate, seed)`
    (all masked positions become <mask>), and scored in packed batches of one shape, about `batch_tokens` tokens
    each (`_packed_mlm_batches`), under bf16 autocast on CUDA as in training, in fp32 elsewhere. Returns floats
    `loss` (nats per masked token, the mean over all masked tokens of the set), `perplexity` = exp(loss),
    `accuracy`, `precision`, `recall`, `f1`, `mcc` (see `classification_metrics`; argmax over the full 33-token
    vocabulary) and the counts behind them.
    The result does not depend on `batch_tokens` beyond float rounding. `device=None` uses the model's device;
    otherwise the model is moved there. The model's train/eval mode is restored on return.
    """
    from checkpoint import unwrap  # DDP / torch.compile wrappers from train.py

    model = unwrap(model)
    if device is not None:
        model.to(device)
    device = next(model.parameters()).device
    tokens, n_cropped = prepare_mlm_sequences(sequences, max_length)
    if not tokens:
        raise EvalError("mlm_metrics got no sequences")
    masks = [fixed_mask(t, mask_rate, seed) for t in tokens]

    loss_sum = 0.0
    confusion = np.zeros((vocab.VOCAB_SIZE, vocab.VOCAB_SIZE), dtype=np.int64)
    was_training = model.training
    model.eval()
    try:
        batches = _packed_mlm_batches(tokens, masks, batch_tokens)
        for input_ids, labels, seq_ids in tqdm(batches, desc="mlm", unit="batch", disable=not progress):
            scored = labels != -100
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                logits = model.logits(input_ids.to(device), seq_ids.to(device))
            logits = logits[scored.to(device)].float()  # (M, 33)
            targets = labels[scored].to(device)  # (M,)
            loss_sum += F.cross_entropy(logits, targets, reduction="sum").item()
            confusion += confusion_matrix(targets.cpu().numpy(), logits.argmax(-1).cpu().numpy(), vocab.VOCAB_SIZE)
    finally:
        model.train(was_training)

    n_masked = int(confusion.sum())
    if n_masked == 0:
        raise EvalError("no maskable residues in the sequences (all empty?)")
    loss = loss_sum / n_masked
    return {"loss": loss, "perplexity": math.exp(loss), **classification_metrics(confusion),
            "n_sequences": len(tokens), "n_tokens": int(sum(t.size for t in tokens)), "n_masked": n_masked,
            "n_cropped": n_cropped, "n_unknown": int(sum(np.count_nonzero(t == vocab.UNK) for t in tokens)),
            "mask_rate": mask_rate, "seed": seed, "max_length": max_length}


def _packed_mlm_batches(tokens: list[np.ndarray], masks: list[np.ndarray], batch_tokens: int):
    """The masked sequences packed side by side into rows, in batches of one (R, T) shape (`model.pack_for_inference`:
    T = the longest sequence rounded up to 128, R = batch_tokens // T, the last batch topped up with empty rows), so
    a compiled kernel (FlexAttention on CUDA) compiles once, not once per padded width. Yields input_ids / labels
    int64 (R, T) and seq_ids int32 (R, T): 0, 1, … per row, -1 on padding."""
    from model import pack_for_inference, packed_rows

    inputs = [torch.from_numpy(np.where(m, vocab.MASK, t.astype(np.int64))) for t, m in zip(tokens, masks)]
    targets = [torch.from_numpy(np.where(m, t.astype(np.int64), -100)) for t, m in zip(tokens, masks)]
    packing = pack_for_inference([t.size for t in tokens], batch_tokens)
    for batch in packing.batches:
        input_ids, seq_ids = packed_rows(inputs, batch, packing.rows, packing.width, fill=vocab.PAD)
        labels, _ = packed_rows(targets, batch, packing.rows, packing.width, fill=-100)
        yield input_ids, labels, seq_ids


def sequences_from_shards(data_dir, name: str, split: str) -> list[np.ndarray]:
    """The `<cls> … <eos>` token arrays stored in the shards of one split (shards.py format), in file order."""
    out = []
    for path in shards.find_shards(data_dir, name, split):
        stream = shards.read_shard(path, mmap=False)
        starts = np.flatnonzero(stream == vocab.CLS)
        if stream.size and (starts.size == 0 or starts[0] != 0):
            raise EvalError(f"{path}: the token stream does not start with <cls>")
        for piece in np.split(stream, starts[1:]):
            if piece[-1] != vocab.EOS:
                raise EvalError(f"{path}: a sequence does not end with <eos>; not a stream of whole sequences")
            out.append(piece)
    return out


def sequences_from_fasta(path) -> list[str]:
    """The non-empty sequences of a FASTA file; an error naming the file when it has none."""
    records = read_fasta(path)
    sequences = [seq for _, seq in records if seq]
    if not sequences:
        raise EvalError(f"FASTA file {path} contains no sequences")
    if len(sequences) < len(records):
        log.info("%s: skipped %d records with an empty sequence", path, len(records) - len(sequences))
    return sequences


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
    residues = dict(_parse_fasta(_zip_member(archive, "splits/sequences.fasta")))
    masks = dict(_parse_fasta(_zip_member(archive, "splits/mask.fasta"))) if resolved_mask else {}
    class_index = np.full(256, -1, dtype=np.int64)
    class_index[np.frombuffer(classes.encode(), dtype=np.uint8)] = np.arange(len(classes))
    parts = {"train": Partition([], []), "valid": Partition([], []), "test": Partition([], [])}
    for header, label_string in _parse_fasta(_zip_member(archive, "splits/sampled.fasta")):
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
# see ../shared/notes/reference_numbers.md. No published ESM2 numbers exist for conservation or meltome_draft.
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
    sequences' hash): stored as .npz under cache_dir, loaded on later calls."""
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


# ----------------------------------------------------------------------------------------------------------------
# Reports
# ----------------------------------------------------------------------------------------------------------------

MLM_ROWS = (("loss", "nats per masked token (token-weighted mean)"), ("perplexity", "exp(loss)"),
            ("accuracy", "masked tokens predicted exactly"), ("precision", "support-weighted"),
            ("recall", "support-weighted (= accuracy)"), ("f1", "support-weighted"), ("mcc", "multiclass"))


def format_mlm(result: dict, source: str) -> str:
    """The stdout table of `evaluate.py mlm`."""
    lines = [f"MLM metrics on {source}: {result['n_sequences']} sequences, {result['n_masked']} masked tokens "
             f"(rate {result['mask_rate']}, seed {result['seed']}, {result['n_cropped']} cropped to "
             f"{result['max_length']} tokens, {result['n_unknown']} <unk> tokens)"]
    lines += [f"  {name:<11}{result[name]:>10.4f}   {meaning}" for name, meaning in MLM_ROWS]
    return "\n".join(lines)


def format_probe(results: list[dict]) -> str:
    """The stdout table of `evaluate.py probe`: one row per feature set (model and controls), published numbers
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


def _json_safe(value):
    """nan -> None so that the output is strict JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def write_json(path, payload: dict) -> None:
    Path(path).write_text(json.dumps(_json_safe(payload), indent=2) + "\n")


# ----------------------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------------------

def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    mlm = commands.add_parser("mlm", help="masked-token metrics with fixed masks")
    mlm.add_argument("--checkpoint", required=True, help="checkpoint directory (model.safetensors + config)")
    source = mlm.add_mutually_exclusive_group(required=True)
    source.add_argument("--fasta", help="FASTA file (plain or .gz)")
    source.add_argument("--data_dir", help="directory of .bin shards (with --data_name and --split)")
    mlm.add_argument("--data_name", help="shard name prefix, as in {name}_{split}_000000.bin")
    mlm.add_argument("--split", choices=shards.SPLITS, help="shard split")
    mlm.add_argument("--mask_rate", type=float, default=0.15, help="fraction of residues masked per sequence")
    mlm.add_argument("--max_length", type=int, default=1024, help="tokens kept per sequence (incl. <cls>/<eos>)")
    mlm.add_argument("--seed", type=int, default=0, help="seed of the fixed masks")
    mlm.add_argument("--batch_tokens", type=int, default=16384, help="padded tokens per forward pass")

    probe = commands.add_parser("probe", help="frozen-embedding probe on a FLIP task")
    probe.add_argument("--checkpoint", help="checkpoint directory (not needed for --control onehot)")
    probe.add_argument("--task", required=True, help=f"one of {', '.join(TASKS)}")
    probe.add_argument("--data_dir", required=True, help="directory of the FLIP zips (../shared/data/flip)")
    probe.add_argument("--split", help=f"gb1 only: one of {', '.join(GB1_SPLITS)} (default three_vs_rest)")
    controls = probe.add_mutually_exclusive_group()
    controls.add_argument("--control", choices=("onehot", "random_init"), help="probe a control instead")
    controls.add_argument("--with_controls", action="store_true", help="checkpoint, onehot and random_init")
    probe.add_argument("--layer", type=int, help="hidden layer to embed (default: the final normed output)")
    probe.add_argument("--layers", help="probe several layers: 'all' (0 = embeddings … L, and the final normed "
                       "output) or a comma list like 2,4,final; the headline layer is the best on validation")
    probe.add_argument("--max_train", type=int, help="cap train and valid sequences (quick runs; flagged)")
    probe.add_argument("--max_test", type=int, help="cap test sequences (quick runs; flagged)")
    probe.add_argument("--seed", type=int, default=0, help="seed of subsampling and the meltome_draft valid set")
    probe.add_argument("--max_length", type=int, default=1024,
                       help="tokens per embedded piece; longer sequences are embedded in pieces")
    probe.add_argument("--batch_tokens", type=int, default=16384, help="padded tokens per embed call")
    probe.add_argument("--cache_dir", default=str(DEFAULT_CACHE_DIR), help="embedding cache ('' = no cache)")

    mlm.add_argument("--controls_data_dir", help="train shards the no-learning controls are fit on (default: "
                     "--data_dir's train split when it has one; 'none' = skip the controls)")
    mlm.add_argument("--controls_data_name", help="their name prefix (default: --data_name)")

    zs = commands.add_parser("zeroshot", help="zero-shot fitness prediction on DMS assays (zeroshot.py)")
    zs.add_argument("--checkpoint", required=True, help="checkpoint directory (model.safetensors + config)")
    zs.add_argument("--dms_dir", required=True, help="folder laid out like ../shared/data/proteingym_dev")
    zs.add_argument("--method", choices=("masked_marginal", "wt_marginal"), default="masked_marginal")
    zs.add_argument("--assays", nargs="+", help="only these assays (default: every mutants/*.csv)")
    zs.add_argument("--max_length", type=int, default=1024,
                    help="tokens per forward pass incl. <cls>/<eos>; longer proteins are scored in windows")
    zs.add_argument("--batch_size", type=int, default=32, help="sequences per forward pass")
    zs.add_argument("--unigram_data_dir", default=str(REPO / "data" / "demo"),
                    help="train shards whose residue frequencies make the unigram control")
    zs.add_argument("--unigram_data_name", default="demo")

    for sub in (mlm, probe, zs):
        sub.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
        sub.add_argument("--output", help="write the results as JSON here")
    args = parser.parse_args(argv)
    if args.command == "mlm" and args.data_dir and not (args.data_name and args.split):
        parser.error("--data_dir needs --data_name and --split")
    if args.command == "mlm" and args.fasta and (args.data_name or args.split):
        parser.error("--data_name / --split only apply with --data_dir")
    if args.command == "probe" and args.checkpoint is None and args.control != "onehot":
        parser.error("--checkpoint is required (only --control onehot runs without one)")
    if args.command == "probe" and args.control == "onehot" and (args.checkpoint or args.layer is not None
                                                                  or args.layers):
        parser.error("--control onehot uses neither --checkpoint nor --layer/--layers")
    if args.command == "probe" and args.layers and args.layer is not None:
        parser.error("give --layer or --layers, not both")
    return args


def cmd_mlm(args) -> dict:
    device = pick_device(args.device)
    model = load_checkpoint(args.checkpoint, device)
    if args.fasta:
        sequences, source = sequences_from_fasta(args.fasta), args.fasta
    else:
        sequences, source = sequences_from_shards(args.data_dir, args.data_name, args.split), \
            f"{args.data_dir}/{args.data_name}_{args.split}_*.bin"
    result = mlm_metrics(model, sequences, mask_rate=args.mask_rate, seed=args.seed, max_length=args.max_length,
                         batch_tokens=args.batch_tokens, progress=True)
    print(format_mlm(result, source))
    controls_result = mlm_controls(args, sequences)
    if controls_result is not None:
        print(controls_result.pop("text"))
        print(f"gain below the best control ({controls_result['best_name']}): "
              f"{controls_result['best'] - result['loss']:+.4f} nats per masked token")
    return {"checkpoint": args.checkpoint, "checkpoint_sha256": checkpoint_id(args.checkpoint), "source": source,
            **result, "controls": controls_result,
            "gain": controls_result["best"] - result["loss"] if controls_result else None}


def mlm_controls(args, sequences) -> dict | None:
    """The no-learning controls (controls.py) on exactly the positions `mlm_metrics` scored in `sequences` (the
    same list it was given), fit on train shards."""
    import controls

    data_dir = args.controls_data_dir or args.data_dir
    name = args.controls_data_name or args.data_name
    implicit = args.controls_data_dir is None and not list(Path(data_dir or ".").glob(f"{name}_train_*.bin"))
    if data_dir in (None, "none") or implicit:
        log.info("controls: skipped (no train shards to fit them on; give --controls_data_dir and "
                 "--controls_data_name)")
        return None
    model = controls.fit_controls(shards.find_shards(data_dir, name, "train"), args.mask_rate)
    tokens, _ = prepare_mlm_sequences(sequences, args.max_length)
    losses = controls.summarise(model.score(controls.masked_sequences(tokens, args.mask_rate, args.seed)))
    return losses | {"text": controls.describe(losses, model)}


def cmd_zeroshot(args) -> dict:
    import controls
    import zeroshot

    device = pick_device(args.device)
    model = load_checkpoint(args.checkpoint, device)
    frequencies = controls.residue_frequencies(shards.find_shards(args.unigram_data_dir, args.unigram_data_name,
                                                                  "train"))
    result = zeroshot.run_zeroshot(model, args.dms_dir, frequencies, method=args.method, max_length=args.max_length,
                                   batch_size=args.batch_size, assays=args.assays, device=device, progress=True)
    print(zeroshot.format_zeroshot(result))
    return {"checkpoint": args.checkpoint, "checkpoint_sha256": checkpoint_id(args.checkpoint),
            "dms_dir": str(args.dms_dir), **result}


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


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        payload = {"mlm": cmd_mlm, "probe": cmd_probe, "zeroshot": cmd_zeroshot}[args.command](args)
    except (EvalError, MutationError, FileNotFoundError, shards.ShardError) as err:
        print(f"evaluate.py: error: {_one_line(err)}", file=sys.stderr)
        return 1
    if args.output:
        write_json(args.output, payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
