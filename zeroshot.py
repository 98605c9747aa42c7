"""Zero-shot fitness prediction: score single- and multi-residue substitutions with a masked LM, no labels seen.

    python evaluate.py zeroshot --checkpoint CKPT --dms_dir ../shared/data/proteingym_dev [--output FILE]

    from zeroshot import score_mutations
    scores = score_mutations(model, "MKTAYIAK…", ["A4G", "K8R:A4G"])          # higher = predicted fitter

Scoring rules (Meier et al. 2021, "Language models enable zero-shot prediction of the effects of mutations on
protein function", the rules ProteinGym uses for ESM):
- masked marginal (default): for each mutated position i, one forward pass with i replaced by <mask>; the score
  of a mutant is Σ_i [log p_i(mutant residue) − log p_i(wild-type residue)] over its substitutions. Passes for
  different positions are batched.
- wild-type marginal (`method="wt_marginal"`): the same sum read from one pass over the unmasked wild type.
- Proteins longer than the model's window (`max_length` tokens including <cls> and <eos>) are scored in a window
  of max_length − 2 residues chosen per position as ProteinGym does for ESM (`get_optimal_window`): the first
  window if the position is in its first half, the last window if in the last half of the protein, otherwise
  the window centred on the position.
- Control: the same sum with log p(a) = the train split's residue frequencies (no context): what a model gets
  for knowing which residues are common. A model's Spearman means something only above it.

A DMS folder is laid out like ../shared/data/proteingym_dev: `fasta/<assay>.fasta` (one record, the wild type),
`mutants/<assay>.csv` (columns mutant,score; mutant like `Q228L` with 1-based positions, multiple substitutions
joined by ':'), and optionally `reference_spearman.csv` (DMS_id and published ESM2 columns).
"""
import csv
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import vocab
from fasta import read_fasta

METHODS = ("masked_marginal", "wt_marginal")
SUBSTITUTION = re.compile(r"([A-Z])(\d+)([A-Z])")


class MutationError(ValueError):
    """A mutant that does not fit its wild type; the message names the assay and the row."""


@dataclass(frozen=True)
class Substitution:
    wt: str
    position: int  # 1-based, in the wild-type sequence
    mt: str


def parse_mutant(text: str, wild_type: str, where: str = "") -> list[Substitution]:
    """'A12G:K40R' -> substitutions, each checked against the wild type. `where` prefixes error messages."""
    subs = []
    for part in text.strip().split(":"):
        match = SUBSTITUTION.fullmatch(part.strip())
        if not match:
            raise MutationError(f"{where}mutant {text!r}: {part!r} is not of the form A12G")
        wt, position, mt = match.group(1), int(match.group(2)), match.group(3)
        for residue in (wt, mt):
            if residue not in vocab.RESIDUES:
                raise MutationError(f"{where}mutant {text!r}: unknown residue {residue!r}")
        if not 1 <= position <= len(wild_type):
            raise MutationError(f"{where}mutant {text!r}: position {position} is outside the wild type "
                                f"(length {len(wild_type)})")
        if wild_type[position - 1] != wt:
            raise MutationError(f"{where}mutant {text!r}: the wild type has {wild_type[position - 1]!r} at "
                                f"position {position}, not {wt!r}")
        subs.append(Substitution(wt, position, mt))
    return subs


def window(position: int, length: int, width: int) -> tuple[int, int]:
    """[start, stop) of the residues fed to the model for a 1-based position (ProteinGym's rule for ESM)."""
    if length <= width:
        return 0, length
    i = position - 1
    if i < width // 2:
        return 0, width
    if i >= length - width // 2:
        return length - width, length
    return i - width // 2, i - width // 2 + width


@torch.inference_mode()
def position_log_probs(model, wild_type: str, positions, *, method: str = "masked_marginal",
                       max_length: int = 1024, batch_size: int = 32, device=None) -> dict[int, np.ndarray]:
    """{position: (VOCAB_SIZE,) log-probabilities at that 1-based position} under the scoring rule `method`."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    from checkpoint import unwrap

    model = unwrap(model)
    device = device or next(model.parameters()).device
    ids, _ = vocab.encode(wild_type)
    width = max_length - 2
    # One pass per position (masked) or per distinct window (wild-type marginal).
    jobs = {}
    for p in sorted(set(positions)):
        start, stop = window(p, len(wild_type), width)
        key = (p, start, stop) if method == "masked_marginal" else (None, start, stop)
        jobs.setdefault(key, []).append(p)
    was_training = model.training
    model.eval()
    out = {}
    try:
        keys = list(jobs)
        for b in range(0, len(keys), batch_size):
            chunk = keys[b:b + batch_size]
            rows = max(stop - start for _, start, stop in chunk) + 2
            input_ids = torch.full((len(chunk), rows), vocab.PAD, dtype=torch.long)
            seq_ids = torch.full((len(chunk), rows), -1, dtype=torch.int32)
            for r, (masked, start, stop) in enumerate(chunk):
                tokens = np.concatenate([[vocab.CLS], ids[start:stop], [vocab.EOS]]).astype(np.int64)
                if masked is not None:
                    tokens[masked - start] = vocab.MASK  # <cls> shifts the 1-based position to index p - start
                input_ids[r, :tokens.size] = torch.from_numpy(tokens)
                seq_ids[r, :tokens.size] = 0
            logits = model.logits(input_ids.to(device), seq_ids.to(device)).float()
            logp = torch.log_softmax(logits, dim=-1).cpu().numpy()  # (B, T, V)
            for r, key in enumerate(chunk):
                start = key[1]
                for p in jobs[key]:
                    out[p] = logp[r, p - start]
    finally:
        model.train(was_training)
    return out


def sum_scores(mutants: list[list[Substitution]], log_probs) -> np.ndarray:
    """Σ over each mutant's substitutions of log p_i(mt) − log p_i(wt); log_probs(position) -> (V,) array."""
    t = vocab.TOKEN_TO_ID
    return np.array([sum(log_probs(s.position)[t[s.mt]] - log_probs(s.position)[t[s.wt]] for s in subs)
                     for subs in mutants])


def score_mutations(model, wild_type: str, mutants: list[str], *, method: str = "masked_marginal",
                    max_length: int = 1024, batch_size: int = 32, device=None) -> np.ndarray:
    """Predicted fitness of each mutant (higher = fitter), e.g. mutants = ["A12G", "A12G:K40R"]."""
    parsed = [parse_mutant(m, wild_type, f"row {i + 1}: ") for i, m in enumerate(mutants)]
    positions = [s.position for subs in parsed for s in subs]
    table = position_log_probs(model, wild_type, positions, method=method, max_length=max_length,
                               batch_size=batch_size, device=device)
    return sum_scores(parsed, table.__getitem__)


def unigram_scores(frequencies: np.ndarray, mutants: list[list[Substitution]]) -> np.ndarray:
    """The no-context control: Σ log f(mt) − log f(wt) with f the train split's residue frequencies (V,)."""
    logf = np.log(np.maximum(frequencies, 1e-12))
    return sum_scores(mutants, lambda _position: logf)


# ---------------------------------------------------------------------------------------------- DMS folders
@dataclass
class Assay:
    name: str
    wild_type: str
    mutants: list[str]
    scores: np.ndarray
    parsed: list[list[Substitution]]


def read_assay(dms_dir, name: str) -> Assay:
    """fasta/<name>.fasta and mutants/<name>.csv, every row checked (errors name the assay, file and row)."""
    dms_dir = Path(dms_dir)
    fasta, table = dms_dir / "fasta" / f"{name}.fasta", dms_dir / "mutants" / f"{name}.csv"
    for path in (fasta, table):
        if not path.is_file():
            raise FileNotFoundError(f"assay {name}: {path} not found")
    records = list(read_fasta(fasta))
    if len(records) != 1:
        raise MutationError(f"assay {name}: {fasta} must hold exactly one record (the wild type), has "
                            f"{len(records)}")
    wild_type = records[0].residues.upper()
    mutants, scores = [], []
    with open(table, newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or not {"mutant", "score"} <= set(reader.fieldnames):
            raise MutationError(f"assay {name}: {table} needs the columns mutant,score (has {reader.fieldnames})")
        for line, row in enumerate(reader, start=2):
            try:
                score = float(row["score"])
            except (TypeError, ValueError):
                raise MutationError(f"assay {name}: {table} line {line}: score {row['score']!r} is not a "
                                    "number") from None
            mutants.append(row["mutant"])
            scores.append(score)
    parsed = [parse_mutant(m, wild_type, f"assay {name}: {table} line {i + 2}: ") for i, m in enumerate(mutants)]
    if not mutants:
        raise MutationError(f"assay {name}: {table} has no mutants")
    return Assay(name, wild_type, mutants, np.array(scores), parsed)


def assay_names(dms_dir) -> list[str]:
    names = sorted(p.stem for p in (Path(dms_dir) / "mutants").glob("*.csv"))
    if not names:
        raise FileNotFoundError(f"no assays: {Path(dms_dir) / 'mutants' / '*.csv'} matches nothing")
    return names


def reference_spearman(dms_dir) -> dict[str, dict[str, float]]:
    """{assay: {'ESM2_8M': ρ, …}} from reference_spearman.csv when the folder has one, else {}."""
    path = Path(dms_dir) / "reference_spearman.csv"
    if not path.is_file():
        return {}
    with open(path, newline="") as f:
        return {row["DMS_id"]: {k: float(v) for k, v in row.items() if k.startswith("ESM2_") and v}
                for row in csv.DictReader(f)}


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    from scipy.stats import spearmanr

    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")  # a constant predictor has no ranking
    return float(spearmanr(x, y).statistic)


def run_zeroshot(model, dms_dir, frequencies: np.ndarray, *, method: str = "masked_marginal",
                 max_length: int = 1024, batch_size: int = 32, assays: list[str] | None = None,
                 device=None, progress: bool = False) -> dict:
    """Spearman per assay (model, unigram control, published ESM2 where known) and the means over assays."""
    from tqdm import tqdm

    reference = reference_spearman(dms_dir)
    rows = []
    for name in tqdm(assays or assay_names(dms_dir), desc="zeroshot", unit="assay", disable=not progress):
        assay = read_assay(dms_dir, name)
        positions = [s.position for subs in assay.parsed for s in subs]
        table = position_log_probs(model, assay.wild_type, positions, method=method, max_length=max_length,
                                   batch_size=batch_size, device=device)
        predicted = sum_scores(assay.parsed, table.__getitem__)
        rows.append({"assay": name, "n_mutants": len(assay.mutants), "length": len(assay.wild_type),
                     "windowed": len(assay.wild_type) > max_length - 2,
                     "spearman": spearman(predicted, assay.scores),
                     "unigram_spearman": spearman(unigram_scores(frequencies, assay.parsed), assay.scores),
                     "reference": reference.get(name, {})})
    means = {"spearman": float(np.nanmean([r["spearman"] for r in rows])),
             "unigram_spearman": float(np.nanmean([r["unigram_spearman"] for r in rows]))}
    for key in sorted({k for r in rows for k in r["reference"]}, key=lambda k: float(re.sub(r"\D", "", k) or 0)):
        values = [r["reference"].get(key) for r in rows]
        if all(v is not None for v in values):
            means[key] = float(np.mean(values))
    return {"method": method, "max_length": max_length, "assays": rows, "mean": means}


def format_zeroshot(result: dict) -> str:
    ref_keys = [k for k in result["mean"] if k.startswith("ESM2_")]
    head = f"{'assay':<42} {'n':>6} {'model':>7} {'unigram':>8}" + "".join(f" {k:>10}" for k in ref_keys)
    lines = [f"zero-shot fitness, {result['method']} (Spearman with the measured score)", head]
    for r in result["assays"]:
        lines.append(f"{r['assay'][:42]:<42} {r['n_mutants']:>6} {r['spearman']:>7.3f} {r['unigram_spearman']:>8.3f}"
                     + "".join(f" {r['reference'].get(k, float('nan')):>10.3f}" for k in ref_keys))
    m = result["mean"]
    lines.append(f"{'mean over ' + str(len(result['assays'])) + ' assays':<42} {'':>6} {m['spearman']:>7.3f} "
                 f"{m['unigram_spearman']:>8.3f}" + "".join(f" {m[k]:>10.3f}" for k in ref_keys))
    return "\n".join(lines)
