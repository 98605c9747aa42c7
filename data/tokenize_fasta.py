"""FASTA -> .bin shards (format in shards.py), with a manifest that accounts for every input record.

    python data/tokenize_fasta.py INPUT [INPUT ...] --output_dir DIR --name NAME
        [--valid_sequences N] [--test_sequences N] [--valid_fasta F ...] [--test_fasta F ...]
        [--shard_tokens N] [--min_length N] [--seed N] [--verify]

Inputs are plain or gzipped FASTA, read by `fasta.read_fasta` (gzip detected by its magic bytes, sequences on
one line or many, any line endings and any letter case). They are streamed twice: a counting pass (which also
rejects a malformed file before anything is written) and a writing pass, so memory stays bounded by one
shard's buffer plus the longest record, whatever the input size.

Splits: `--valid_sequences` / `--test_sequences` records are drawn at random (with `--seed`) from the INPUTs;
whole files given with `--valid_fasta` / `--test_fasta` go to that split instead (use these when the held-out
set is already chosen, e.g. at the cluster level). Every other record of the INPUTs is train, in file order.

Each sequence is stored whole as `<cls> residues <eos>` and never split across shards; one longer than
`--shard_tokens` gets a shard of its own. Records are skipped only when empty or shorter than `--min_length`
residues, and each skip is counted. Characters outside the vocabulary become `<unk>`, lowercase is
upper-cased; both are counted. `DIR/NAME_manifest.json` records inputs, arguments, per-split and per-shard
counts, per-shard sha256 and those counters; `--verify` then re-reads everything independently (`verify`).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: import vocab, shards

import argparse
import hashlib
import json
import os
import re
import time
from typing import Iterator

import numpy as np
from tqdm import tqdm

import vocab
from fasta import FastaError, Record, open_bytes, read_fasta
from shards import HEADER_BYTES, MAGIC, SPLITS, VERSION, ShardError, read_shard, sha256_file, shard_name, write_shard

LOWERCASE = bytes(range(ord("a"), ord("z") + 1))


class TokenizeError(Exception):
    """An expected failure (bad input file, bad arguments, existing output); the message names the file."""


# ---------------------------------------------------------------------------------------------- reading FASTA
def read_records(path, progress: tqdm | None = None) -> Iterator[Record]:
    """`fasta.read_fasta` (the one FASTA reader), its errors raised as this tool's TokenizeError."""
    try:
        yield from read_fasta(path, progress=progress)
    except FastaError as e:
        raise TokenizeError(str(e)) from None


def skip_reason(residues: str, min_length: int) -> str | None:
    """Why a record is left out of every split ("empty", "too_short"), or None if it is kept."""
    if not residues:
        return "empty"
    if len(residues) < min_length:
        return "too_short"
    return None


# --------------------------------------------------------------------------------------- splits and shards
def draw_held_out(n_eligible: int, n_valid: int, n_test: int, seed: int) -> tuple[set[int], set[int]]:
    """Ordinals (among kept records of the INPUTs) that go to valid and to test; disjoint, reproducible.

    Only the chosen ordinals are held, so memory is O(n_valid + n_test) whatever n_eligible is.
    """
    if n_valid + n_test > n_eligible:
        raise TokenizeError(f"asked for {n_valid} valid + {n_test} test sequences but the inputs have only "
                            f"{n_eligible} kept records")
    chosen = np.random.default_rng(seed).choice(n_eligible, size=n_valid + n_test, replace=False).tolist()
    return set(chosen[:n_valid]), set(chosen[n_valid:])


class ShardWriter:
    """Packs whole sequences of one split into shards of at most `shard_tokens` tokens (uint8 ids).

    A sequence is never split: if it does not fit in the current shard, that shard is closed first; one
    longer than `shard_tokens` on its own gets a shard to itself.
    """

    def __init__(self, output_dir: Path, name: str, split: str, shard_tokens: int):
        self.output_dir, self.name, self.split, self.shard_tokens = output_dir, name, split, shard_tokens
        self.buffer = bytearray()
        self.buffer_sequences = 0
        self.shards: list[dict] = []  # manifest entries of the shards written so far
        self.written: list[Path] = []

    def add(self, tokens: np.ndarray) -> None:
        if self.buffer and len(self.buffer) + tokens.size > self.shard_tokens:
            self.flush()
        self.buffer += tokens.data
        self.buffer_sequences += 1

    def flush(self) -> None:
        if not self.buffer:
            return
        path = self.output_dir / shard_name(self.name, self.split, len(self.shards))
        sha256 = write_shard(path, np.frombuffer(self.buffer, dtype=np.uint8))
        self.written.append(path)
        self.shards.append({"file": path.name, "tokens": len(self.buffer), "sequences": self.buffer_sequences,
                            "sha256": sha256})
        self.buffer = bytearray()
        self.buffer_sequences = 0

    def summary(self) -> dict:
        sequences = sum(s["sequences"] for s in self.shards)
        tokens = sum(s["tokens"] for s in self.shards)
        return {"sequences": sequences, "tokens": tokens, "residues": tokens - 2 * sequences,
                "shards": self.shards}


def output_paths(output_dir: Path, name: str) -> list[Path]:
    """Files of an earlier run with this name: its manifest and any of its shards."""
    shards = [p for split in SPLITS for p in output_dir.glob(f"{name}_{split}_*.bin")]
    manifest = output_dir / f"{name}_manifest.json"
    return shards + ([manifest] if manifest.exists() else [])


def write_json(path: Path, obj: dict) -> None:
    """Atomic (temp file + rename), so a manifest is either complete or absent."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------------ the tool
def tokenize_fasta(inputs, output_dir, name: str, *, valid_sequences: int = 0, test_sequences: int = 0,
                   valid_inputs=(), test_inputs=(), shard_tokens: int = 100_000_000, min_length: int = 1,
                   seed: int = 0, progress: bool = False) -> dict:
    """Tokenize FASTA files into `{name}_{split}_{i:06d}.bin` shards under `output_dir`; return the manifest.

    inputs: FASTA paths whose records are train, except `valid_sequences` + `test_sequences` drawn at random.
    valid_inputs / test_inputs: FASTA paths that go entirely to valid / test.
    shard_tokens: maximum tokens per shard (bytes of body), except for a single longer sequence.
    min_length: records with fewer residues are skipped (and counted); empty records are always skipped.
    Raises TokenizeError (naming the file) on bad input or if `output_dir` already holds `name`'s outputs.
    """
    output_dir = Path(output_dir)
    roles = [(Path(p), "random") for p in inputs] + [(Path(p), "valid") for p in valid_inputs] + \
            [(Path(p), "test") for p in test_inputs]
    if not roles:
        raise TokenizeError("no input FASTA files given")
    if shard_tokens < 1 or min_length < 0 or valid_sequences < 0 or test_sequences < 0:
        raise TokenizeError("shard_tokens must be >= 1; min_length, valid_sequences, test_sequences >= 0")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise TokenizeError(f"name {name!r} must be letters, digits, '_', '.', '-' (it starts every file name)")
    for path, _ in roles:  # fail on a missing file before the (possibly long) counting pass
        if not path.is_file():
            raise TokenizeError(f"{path}: no such file" if not path.exists() else f"{path}: not a regular file")
    if output_dir.exists() and output_paths(output_dir, name):
        raise TokenizeError(f"{output_dir} already holds outputs named {name!r} "
                            f"(e.g. {output_paths(output_dir, name)[0].name}); remove them or choose another --name")
    total_bytes = sum(path.stat().st_size for path, _ in roles)

    # Pass 1: count records (and those kept) per input; this also rejects a malformed file before any writing.
    input_entries, n_eligible, n_kept_total = [], 0, 0
    with tqdm(total=total_bytes, unit="B", unit_scale=True, desc="counting", disable=not progress) as bar:
        for path, role in roles:
            n_records = n_kept = 0
            for record in read_records(path, bar):
                n_records += 1
                n_kept += skip_reason(record.residues, min_length) is None
            input_entries.append({"path": str(path.resolve()), "split": role, "bytes": path.stat().st_size,
                                  "records": n_records})
            n_kept_total += n_kept
            if role == "random":
                n_eligible += n_kept
    if n_kept_total == 0:
        raise TokenizeError(f"{', '.join(str(p) for p, _ in roles)}: every record is empty or shorter than "
                            f"--min_length {min_length}; nothing to write")
    valid_ids, test_ids = draw_held_out(n_eligible, valid_sequences, test_sequences, seed)

    # Pass 2: encode and write.
    output_dir.mkdir(parents=True, exist_ok=True)
    writers = {split: ShardWriter(output_dir, name, split, shard_tokens) for split in SPLITS}
    skipped = {"empty": 0, "too_short": 0}
    changed = {"sequences_with_unknown": 0, "unknown_characters": 0,
               "sequences_with_lowercase": 0, "lowercase_characters": 0}
    try:
        ordinal = 0  # index of the next kept record of the INPUTs, in the numbering draw_held_out used
        with tqdm(total=total_bytes, unit="B", unit_scale=True, desc="tokenizing", disable=not progress) as bar:
            for path, role in roles:
                for record in read_records(path, bar):
                    reason = skip_reason(record.residues, min_length)
                    if reason is not None:
                        skipped[reason] += 1
                        continue
                    if role == "random":
                        split = "valid" if ordinal in valid_ids else "test" if ordinal in test_ids else "train"
                        ordinal += 1
                    else:
                        split = role
                    tokens = vocab.encode_with_specials(record.residues)
                    n_unknown = int(np.count_nonzero(tokens == vocab.UNK))
                    changed["sequences_with_unknown"] += n_unknown > 0
                    changed["unknown_characters"] += n_unknown
                    if not record.residues.isupper():  # cheap test first; most sequences are all upper case
                        raw = record.residues.encode("utf-8")
                        n_lower = len(raw) - len(raw.translate(None, LOWERCASE))
                        changed["sequences_with_lowercase"] += n_lower > 0
                        changed["lowercase_characters"] += n_lower
                    writers[split].add(tokens)
        for writer in writers.values():
            writer.flush()
        manifest = {
            "name": name,
            "format": {"magic": MAGIC, "version": VERSION, "header_bytes": HEADER_BYTES, "token_dtype": "uint8",
                       "sequence_layout": "<cls> residues <eos>", "vocab_size": vocab.VOCAB_SIZE},
            "args": {"valid_sequences": valid_sequences, "test_sequences": test_sequences,
                     "shard_tokens": shard_tokens, "min_length": min_length, "seed": seed},
            "inputs": input_entries,
            "records": sum(entry["records"] for entry in input_entries),
            "skipped": skipped,
            "changed": changed,
            "splits": {split: writer.summary() for split, writer in writers.items()},
        }
        write_json(output_dir / f"{name}_manifest.json", manifest)
    except BaseException:
        for writer in writers.values():  # never leave a partial set of shards that looks complete
            for path in writer.written:
                path.unlink(missing_ok=True)
        raise
    return manifest


# ------------------------------------------------------------------------------------------ verification
def _multiset_add(state: list[int], sequence: bytes) -> None:
    """Order-independent multiset digest: (count, sum of 128-bit hashes mod 2^128). Duplicates count twice."""
    state[0] += 1
    state[1] = (state[1] + int.from_bytes(hashlib.blake2b(sequence, digest_size=16).digest(), "little")) % (1 << 128)


def verify(manifest_path) -> dict:
    """Check that the shards of a manifest hold exactly the input sequences (as a multiset) minus the skips.

    Re-reads every input with a separate, simpler parser (binary lines, `bytes.splitlines`, a regex for the
    alphabet) rather than `read_fasta` + `vocab.encode`, and every shard through `shards.read_shard`; checks each
    shard's sha256, token and sequence counts, the `<cls> residues <eos>` layout, the skip and `<unk>` counts,
    and that valid/test hold the requested numbers. Memory is bounded: sequences are compared through a
    multiset digest. Returns a summary dict; raises TokenizeError naming the first mismatch.
    """
    manifest_path = Path(manifest_path)
    manifest = json.loads(manifest_path.read_text())
    output_dir, args = manifest_path.parent, manifest["args"]
    letters = "".join(t for t in vocab.TOKENS if len(t) == 1)
    not_in_vocab = re.compile(rb"[^" + re.escape(letters).encode() + rb"]")

    expected, skipped, unknown = [0, 0], {"empty": 0, "too_short": 0}, 0
    for entry in manifest["inputs"]:
        records = 0
        with open_bytes(entry["path"]) as (stream, _):
            residues = None
            for physical in stream:
                for line in physical.splitlines():
                    if line.startswith(b">"):
                        records += 1
                        if residues is not None:
                            unknown += _verify_expect(residues, args["min_length"], not_in_vocab, expected, skipped)
                        residues = []
                    elif line.strip():
                        if residues is None:
                            raise TokenizeError(f"{entry['path']}: text before the first '>' (changed since?)")
                        residues.append(line.strip())
            if residues is not None:
                unknown += _verify_expect(residues, args["min_length"], not_in_vocab, expected, skipped)
        if records != entry["records"]:
            raise TokenizeError(f"{entry['path']}: {records} records now, the manifest says {entry['records']}")
    if skipped != manifest["skipped"] or unknown != manifest["changed"]["unknown_characters"]:
        raise TokenizeError(f"{manifest_path}: skipped {skipped} and {unknown} unknown characters on re-reading, "
                            f"the manifest says {manifest['skipped']} and {manifest['changed']['unknown_characters']}")

    # <unk> reads as the '?' the inputs' unknown characters became; any other special token inside a sequence
    # reads as a NUL byte, which no normalised input holds, so it cannot pass for a residue.
    to_letter = np.frombuffer(b"".join(t.encode() if len(t) == 1 else b"?" if t == "<unk>" else b"\0"
                                       for t in vocab.TOKENS), dtype=np.uint8)
    found, totals = [0, 0], {}
    for split, info in manifest["splits"].items():
        n_split = 0
        for shard in info["shards"]:
            path = output_dir / shard["file"]
            tokens = np.asarray(read_shard(path))
            if tokens.size and tokens.max() >= vocab.VOCAB_SIZE:
                raise TokenizeError(f"{path}: token id {tokens.max()} is outside the vocabulary")
            if sha256_file(path) != shard["sha256"] or tokens.size != shard["tokens"]:
                raise TokenizeError(f"{path}: sha256 or token count differs from {manifest_path}")
            ends = np.flatnonzero(tokens == vocab.EOS) + 1
            starts = np.concatenate([[0], ends[:-1]])
            if (ends.size != shard["sequences"] or (ends.size and ends[-1] != tokens.size)
                    or np.any(tokens[starts] != vocab.CLS)
                    or np.count_nonzero(tokens == vocab.CLS) != ends.size):
                raise TokenizeError(f"{path}: not {shard['sequences']} whole '<cls> residues <eos>' sequences")
            text = to_letter[tokens].tobytes()
            for start, end in zip(starts.tolist(), ends.tolist()):
                _multiset_add(found, text[start + 1:end - 1])
            n_split += ends.size
        totals[split] = n_split
        if n_split != info["sequences"]:
            raise TokenizeError(f"{manifest_path}: {split} shards hold {n_split} sequences, manifest says "
                                f"{info['sequences']}")
    for split in ("valid", "test"):  # exact only when no whole file was given for the split as well
        asked = args[f"{split}_sequences"]
        if not any(e["split"] == split for e in manifest["inputs"]) and totals[split] != asked:
            raise TokenizeError(f"{manifest_path}: {split} holds {totals[split]} sequences, {asked} were asked")
    if found != expected:
        raise TokenizeError(f"{manifest_path}: the shards' {found[0]} sequences are not the inputs' "
                            f"{expected[0]} kept sequences (as a multiset)")
    return {"sequences": found[0], "skipped": skipped, "unknown_characters": unknown, "per_split": totals}


def _verify_expect(lines: list[bytes], min_length: int, not_in_vocab: re.Pattern, expected: list[int],
                   skipped: dict) -> int:
    """Add one input record to the expected multiset (or to the skip counts); return its unknown characters."""
    residues = b"".join(lines).decode("utf-8", errors="replace")
    if not residues:
        skipped["empty"] += 1
        return 0
    if len(residues) < min_length:
        skipped["too_short"] += 1
        return 0
    ascii_upper = residues.encode("utf-8").upper() if residues.isascii() else \
        "".join(c.upper() if c.isascii() else "?" for c in residues).encode()
    normalised, n_unknown = not_in_vocab.subn(b"?", ascii_upper)
    _multiset_add(expected, normalised)
    return n_unknown


# -------------------------------------------------------------------------------------------------- CLI
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="FASTA or gzipped FASTA files")
    parser.add_argument("--output_dir", required=True, help="directory for the shards and NAME_manifest.json")
    parser.add_argument("--name", required=True, help="dataset name: files are NAME_{train,valid,test}_000000.bin")
    parser.add_argument("--valid_sequences", type=int, default=0, help="records drawn at random for valid")
    parser.add_argument("--test_sequences", type=int, default=0, help="records drawn at random for test")
    parser.add_argument("--valid_fasta", nargs="+", default=[], metavar="F", help="files that are all valid")
    parser.add_argument("--test_fasta", nargs="+", default=[], metavar="F", help="files that are all test")
    parser.add_argument("--shard_tokens", type=int, default=100_000_000, help="max tokens (bytes) per shard")
    parser.add_argument("--min_length", type=int, default=1, help="skip (and count) shorter records, residues")
    parser.add_argument("--seed", type=int, default=0, help="seed of the valid/test draw")
    parser.add_argument("--verify", action="store_true", help="afterwards, re-read inputs and shards and check")
    args = parser.parse_args(argv)
    prog = Path(sys.argv[0]).name
    try:
        start = time.perf_counter()
        manifest = tokenize_fasta(args.inputs, args.output_dir, args.name, valid_sequences=args.valid_sequences,
                                  test_sequences=args.test_sequences, valid_inputs=args.valid_fasta,
                                  test_inputs=args.test_fasta, shard_tokens=args.shard_tokens,
                                  min_length=args.min_length, seed=args.seed, progress=sys.stderr.isatty())
        seconds = time.perf_counter() - start
        residues = sum(s["residues"] for s in manifest["splits"].values())
        for split, s in manifest["splits"].items():
            print(f"{split}: {s['sequences']:,} sequences, {s['tokens']:,} tokens in {len(s['shards'])} shard(s)")
        print(f"read {manifest['records']:,} records; skipped {manifest['skipped']}; changed {manifest['changed']}")
        print(f"{residues:,} residues in {seconds:.1f} s = {residues / seconds:,.0f} residues/s; "
              f"manifest {Path(args.output_dir) / (args.name + '_manifest.json')}")
        if args.verify:
            start = time.perf_counter()
            result = verify(Path(args.output_dir) / f"{args.name}_manifest.json")
            print(f"verified in {time.perf_counter() - start:.1f} s: the shards hold exactly the "
                  f"{result['sequences']:,} kept input sequences (multiset), skips and <unk> counts match")
    except (TokenizeError, FastaError, ShardError, OSError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
