"""Score any checkpoint: masked-LM metrics with fixed masks, and zero-shot fitness on DMS assays.

    python evaluate.py mlm      --checkpoint CKPT (--fasta FILE | --data_dir DIR --data_name NAME --split S)
    python evaluate.py zeroshot --checkpoint CKPT --dms_dir ../shared/data/proteingym_dev    (code in zeroshot.py)

Representation probes are a tool of their own: `python probe.py …` (`python evaluate.py probe …` prints that
pointer and exits with status 2 rather than forwarding, so that each tool has one command line).

MLM protocol (docs/EVALUATE.md has the full text, the reference numbers and the caveats): each sequence is cropped
to its first `max_length` tokens and masked by `validation.mask_sequence` (the positions are a pure function of
seed, sequence and rate, so every model sees the same masks; all become <mask>); the batches and the sums are
validation.py's, the ones train.py validates with. Loss is the token-weighted mean cross-entropy over every
masked token of the set; accuracy, weighted precision / recall / F1 and MCC come from one confusion matrix.

Everything behind the CLI takes a model object, so a notebook can call `mlm_metrics` directly.
"""
import argparse
import json
import logging
import math
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import shards
import validation
import vocab
from fasta import FastaError, read_fasta
from zeroshot import MutationError

log = logging.getLogger("evaluate")

REPO = Path(__file__).resolve().parent


class EvalError(ValueError):
    """Bad input to the evaluation (unknown task, missing file, empty FASTA, incompatible checkpoint).

    The message names the offending thing; the CLI prints it as one line and exits non-zero."""


# ----------------------------------------------------------------------------------------------------------------
# Inputs: device, checkpoint, sequences (shared with probe.py)
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
    from checkpoint import load_model  # model.py is imported only when a model is used

    try:
        return load_model(path, device)
    except FileNotFoundError as err:
        raise EvalError(str(err)) from err
    except (ValueError, TypeError, RuntimeError) as err:  # unknown config keys, bad values, shape mismatches
        raise EvalError(f"checkpoint {path} is incompatible with this model.py: {one_line(err)}") from err


def checkpoint_id(path) -> str:
    """sha256 of the checkpoint's weights file: what a result (and probe.py's embedding cache) names a model by."""
    from checkpoint import MODEL_FILE

    return shards.sha256_file(Path(path) / MODEL_FILE)


def sequences_from_fasta(path) -> list[str]:
    """The non-empty sequences of a FASTA file; an error naming the file when it has none."""
    records = list(read_fasta(path))
    sequences = [record.residues for record in records if record.residues]
    if not sequences:
        raise EvalError(f"FASTA file {path} contains no sequences")
    if len(sequences) < len(records):
        log.info("%s: skipped %d records with an empty sequence", path, len(records) - len(sequences))
    return sequences


def one_line(err: Exception) -> str:
    return " ".join(str(err).split())[:500]


# ----------------------------------------------------------------------------------------------------------------
# Masked-LM metrics
# ----------------------------------------------------------------------------------------------------------------

def classification_metrics(confusion: np.ndarray) -> dict:
    """Accuracy, support-weighted precision / recall / F1, and multiclass MCC of a confusion matrix (row = true
    class, column = predicted class): the metric set of the published ESM2 MLM benchmark.

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

    Every sequence is cropped to `max_length` tokens and scored by `validation.mlm_metrics` on
    `validation.packed_batches`, under bf16 autocast on CUDA as in training, in fp32 elsewhere. Returns floats
    `loss` (nats per masked token, the mean over all masked tokens of the set), `perplexity` = exp(loss),
    `accuracy`, `precision`, `recall`, `f1`, `mcc` (see `classification_metrics`; argmax over the full 33-token
    vocabulary) and the counts behind them.
    The result does not depend on `batch_tokens` beyond float rounding. `device=None` uses the model's device;
    otherwise the model is moved there. The model's train/eval mode is restored on return.
    """
    from checkpoint import unwrap  # DDP / torch.compile wrappers from train.py
    from model import FLEX_BLOCK

    model = unwrap(model)
    if device is not None:
        model.to(device)
    device = next(model.parameters()).device
    tokens, n_cropped = prepare_mlm_sequences(sequences, max_length)
    if not tokens:
        raise EvalError("mlm_metrics got no sequences")
    # Longest first, into rows as wide as the longest sequence rounded up to FlexAttention's block, batch_tokens
    # per batch: every batch has one shape, so the compiled kernels compile once, not once per padded width.
    longest_first = sorted(tokens, key=lambda t: -t.size)
    width = -(-longest_first[0].size // FLEX_BLOCK) * FLEX_BLOCK
    batches = validation.packed_batches(longest_first, row_length=width, mask_rate=mask_rate, seed=seed,
                                        rows_per_batch=max(1, batch_tokens // width))
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    was_training = model.training
    model.eval()
    try:
        result = validation.mlm_metrics(model.logits, tqdm(batches, desc="mlm", unit="batch", disable=not progress),
                                        device, autocast, confusion=True)
    finally:
        model.train(was_training)
    if result["masked_tokens"] == 0:
        raise EvalError("no maskable residues in the sequences (all empty?)")
    return {"loss": result["loss"], "perplexity": math.exp(result["loss"]),
            **classification_metrics(result["confusion"]), "n_sequences": len(tokens),
            "n_tokens": int(sum(t.size for t in tokens)), "n_masked": result["masked_tokens"],
            "n_cropped": n_cropped, "n_unknown": int(sum(np.count_nonzero(t == vocab.UNK) for t in tokens)),
            "mask_rate": mask_rate, "seed": seed, "max_length": max_length}


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

    for sub in (mlm, zs):
        sub.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
        sub.add_argument("--output", help="write the results as JSON here")
    args = parser.parse_args(argv)
    if args.command == "mlm" and args.data_dir and not (args.data_name and args.split):
        parser.error("--data_dir needs --data_name and --split")
    if args.command == "mlm" and args.fasta and (args.data_name or args.split):
        parser.error("--data_name / --split only apply with --data_dir")
    return args


def cmd_mlm(args) -> dict:
    device = pick_device(args.device)
    model = load_checkpoint(args.checkpoint, device)
    if args.fasta:
        sequences, source = sequences_from_fasta(args.fasta), args.fasta
    else:
        sequences = validation.shard_sequences(args.data_dir, args.data_name, args.split)
        source = f"{args.data_dir}/{args.data_name}_{args.split}_*.bin"
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
    same list, cropped and masked the same way), fit on train shards."""
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
    masked = [validation.mask_sequence(t, args.mask_rate, args.seed) for t in tokens]
    losses = controls.summarise(model.score(masked))
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
            "dms_dir": str(args.dms_dir), "unigram_data": {"dir": str(args.unigram_data_dir),
                                                          "name": args.unigram_data_name}, **result}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["probe"]:
        print("evaluate.py: representation probes moved to their own tool: python probe.py " + " ".join(argv[1:]),
              file=sys.stderr)
        return 2
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        payload = {"mlm": cmd_mlm, "zeroshot": cmd_zeroshot}[args.command](args)
    except (EvalError, MutationError, FastaError, FileNotFoundError, shards.ShardError) as err:
        print(f"evaluate.py: error: {one_line(err)}", file=sys.stderr)
        return 1
    if args.output:
        write_json(args.output, payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
