"""The CPU quality track's data: Swiss-Prot 2014 clustered at 50% identity, as shards, with a fixed validation set.

    python data/prepare_swissprot.py [--shared ../shared/data/swissprot2014_sp50] [--output_dir data/sp50]

train  every record of `sp50_train.fasta.gz` (88,518 sequences, 38M residues), in file order;
valid  the first VALID_SEQUENCES records of `sp50_valid.fasta.gz` (held-out clusters), residues truncated to
       VALID_RESIDUES, so the validation set (and its fixed masks) is the same for every recipe whose
       max_length is >= VALID_RESIDUES + 2. The benchmarks use the same rule (benchmarks/harness.py).

The shards and `sp50_manifest.json` (sha256 of every shard) are written by data/tokenize_fasta.py; this script only
chooses the inputs. An existing complete output folder is left as it is (the manifest says what is in it).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: import vocab, shards

import argparse
import tempfile

from fasta import FastaError, read_fasta  # noqa: E402
from tokenize_fasta import TokenizeError, tokenize_fasta  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data" / "swissprot2014_sp50"
NAME = "sp50"
VALID_SEQUENCES = 1000
VALID_RESIDUES = 510  # + <cls> + <eos> = 512 tokens, the quality track's max_length


def prepare(shared=SHARED, output_dir=ROOT / "data" / NAME, valid_sequences: int = VALID_SEQUENCES,
            valid_residues: int = VALID_RESIDUES) -> Path:
    """Write `{output_dir}/sp50_{train,valid}_*.bin` and the manifest (once); return the output folder."""
    shared, output_dir = Path(shared), Path(output_dir)
    train, valid = shared / "sp50_train.fasta.gz", shared / "sp50_valid.fasta.gz"
    for path in (train, valid):
        if not path.is_file():
            raise TokenizeError(f"{path}: not found (the Swiss-Prot corpus lives in ../shared/data/)")
    if (output_dir / f"{NAME}_manifest.json").is_file():
        return output_dir
    with tempfile.TemporaryDirectory() as tmp:
        subset = Path(tmp) / "sp50_valid_subset.fasta"
        with open(subset, "w") as f:
            for record in read_fasta(valid, limit=valid_sequences):
                f.write(f">{record.header}\n{record.residues[:valid_residues]}\n")
        tokenize_fasta([train], output_dir, NAME, valid_inputs=[subset], progress=False)
    return output_dir


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shared", default=str(SHARED), help="folder holding sp50_train/valid.fasta.gz")
    p.add_argument("--output_dir", default=str(ROOT / "data" / NAME))
    p.add_argument("--valid_sequences", type=int, default=VALID_SEQUENCES)
    p.add_argument("--valid_residues", type=int, default=VALID_RESIDUES)
    args = p.parse_args(argv)
    try:
        out = prepare(args.shared, args.output_dir, args.valid_sequences, args.valid_residues)
    except (TokenizeError, FastaError) as e:
        sys.exit(f"prepare_swissprot.py: {e}")
    print(f"{out}/{NAME}_manifest.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
