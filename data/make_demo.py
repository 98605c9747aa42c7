"""Rebuild the embedded demo data set `data/demo/` (data_name `demo`) from the shared Swiss-Prot corpus.

    python data/make_demo.py [--source_dir ../shared/data/swissprot2014_sp50] [--output_dir data/demo]

Draws, with a fixed seed, `--train_sequences` records from `sp50_train.fasta.gz` and `--valid_sequences` +
`--test_sequences` disjoint records from `sp50_valid.fasta.gz` (the corpus' own test split is withheld from
../shared, so the demo test split comes from its valid clusters, disjoint from the demo valid split), keeping
only records of `--min_length`..`--max_length` residues. The draws go through `tokenize_fasta` (whole files
per split), are checked with `tokenize_fasta.verify`, and land as `demo_{train,valid,test}_000000.bin`,
`demo_manifest.json` and `SOURCE.md`. Same source + same arguments = byte-identical files.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: import fasta, data.*

import argparse
import tempfile

import numpy as np

from data.tokenize_fasta import TokenizeError, tokenize_fasta, verify, write_json
from fasta import FastaError, Record, read_fasta
from shards import SPLITS

REPO_ROOT = Path(__file__).resolve().parent.parent
NAME = "demo"


def draw_records(path: Path, n: int, min_length: int, max_length: int, seed: int) -> tuple[list[Record], dict]:
    """`n` records of `min_length`..`max_length` residues drawn at random (in file order); plus the counts.

    Two streaming passes (count, then collect the chosen ordinals), so only the chosen records are held.
    """
    in_range = sum(min_length <= len(r.residues) <= max_length for r in read_fasta(path))
    if n > in_range:
        raise TokenizeError(f"{path}: only {in_range} records of {min_length}..{max_length} residues, {n} asked")
    chosen = set(np.random.default_rng(seed).choice(in_range, size=n, replace=False).tolist())
    records, ordinal, total = [], 0, 0
    for record in read_fasta(path):
        total += 1
        if min_length <= len(record.residues) <= max_length:
            if ordinal in chosen:
                records.append(record)
            ordinal += 1
    return records, {"records": total, "in_length_range": in_range, "drawn": n}


def write_fasta(path: Path, records: list[Record]) -> None:
    path.write_text("".join(f">{r.header}\n{r.residues}\n" for r in records))


def source_md(manifest: dict, counts: dict, args, command: str, sizes: dict[str, int]) -> str:
    """The origin, licence, exact command and counts of the demo set, as Markdown."""
    splits = manifest["splits"]
    rows = "\n".join(f"| `{s['shards'][0]['file']}` | {s['sequences']:,} | {s['residues']:,} | {s['tokens']:,} | "
                     f"{sizes[s['shards'][0]['file']]:,} |" for s in splits.values())
    train, held = counts["train"], counts["held_out"]
    return f"""# Demo data: a small Swiss-Prot 50% cluster subset (data_dir `data/demo`, data_name `demo`)

Small enough to ship ({sum(sizes.values()) / 1e6:.2f} MB of shards) so that training and the tests run offline on any
machine; far too small to train a useful model.

## Origin and licence
Derived from `../shared/data/swissprot2014_sp50/` (UniProtKB/Swiss-Prot release 2014_01, clustered at 50%
identity with MMseqs2, cluster-level train/valid/test split; see that folder's SOURCE.md). UniProt data is
licensed under CC BY 4.0 (https://www.uniprot.org/help/license): cite UniProt ("UniProt: the Universal Protein
Knowledgebase", Nucleic Acids Res.) when you use it.

- train: {train['drawn']:,} records drawn from `sp50_train.fasta.gz`, which has {train['records']:,} records
  ({train['in_length_range']:,} of {args.min_length}..{args.max_length} residues).
- valid, test: {held['drawn']:,} records drawn from `sp50_valid.fasta.gz`, which has {held['records']:,} records
  ({held['in_length_range']:,} of {args.min_length}..{args.max_length} residues); a seeded permutation puts
  {args.valid_sequences:,} of them in valid and the other {args.test_sequences:,} in test. The corpus' own test
  split is withheld from ../shared, so the demo test split is a second, disjoint draw from its validation
  clusters.
- Only records of {args.min_length}..{args.max_length} residues were eligible (none is cropped by a 1,024-token
  context). The tokenizer then skipped {sum(manifest['skipped'].values())} records and met
  {manifest['changed']['unknown_characters']} unknown characters.

## Files
| file | sequences | residues | tokens | bytes |
|---|---|---|---|---|
{rows}

`demo_manifest.json` holds per-shard sha256 and all counts. Each shard was checked with
`tokenize_fasta.verify` (decoded shards = drawn sequences, as a multiset) before this file was written.

## Rebuild
```
{command}
```
(seed {args.seed}; byte-identical output from the same source files.)
"""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source_dir", default=str(REPO_ROOT.parent / "shared" / "data" / "swissprot2014_sp50"),
                        help="folder with sp50_train.fasta.gz and sp50_valid.fasta.gz")
    parser.add_argument("--output_dir", default=str(REPO_ROOT / "data" / "demo"))
    parser.add_argument("--train_sequences", type=int, default=4000)
    parser.add_argument("--valid_sequences", type=int, default=300)
    parser.add_argument("--test_sequences", type=int, default=300)
    parser.add_argument("--min_length", type=int, default=30, help="residues; shorter records are not drawn")
    parser.add_argument("--max_length", type=int, default=1000, help="residues; longer records are not drawn")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    source, output_dir = Path(args.source_dir), Path(args.output_dir)
    prog = Path(sys.argv[0]).name
    try:
        train, train_counts = draw_records(source / "sp50_train.fasta.gz", args.train_sequences,
                                           args.min_length, args.max_length, args.seed)
        held, held_counts = draw_records(source / "sp50_valid.fasta.gz", args.valid_sequences + args.test_sequences,
                                         args.min_length, args.max_length, args.seed)
        order = np.random.default_rng(args.seed).permutation(len(held))  # which drawn records are valid vs test
        valid_ids = set(order[:args.valid_sequences].tolist())
        output_dir.mkdir(parents=True, exist_ok=True)
        for split in SPLITS:  # this script owns these names in output_dir: replace the previous build
            for old in output_dir.glob(f"{NAME}_{split}_*.bin"):
                old.unlink()
        (output_dir / f"{NAME}_manifest.json").unlink(missing_ok=True)

        with tempfile.TemporaryDirectory() as tmp:
            fasta = {split: Path(tmp) / f"{NAME}_{split}.fasta" for split in SPLITS}
            write_fasta(fasta["train"], train)
            write_fasta(fasta["valid"], [r for i, r in enumerate(held) if i in valid_ids])
            write_fasta(fasta["test"], [r for i, r in enumerate(held) if i not in valid_ids])
            manifest = tokenize_fasta([fasta["train"]], output_dir, NAME, valid_inputs=[fasta["valid"]],
                                      test_inputs=[fasta["test"]], seed=args.seed)
            verify(output_dir / f"{NAME}_manifest.json")
        # The temporary FASTA files are gone: name each input by what it was drawn from instead.
        described = {"train": f"sp50_train.fasta.gz: {args.train_sequences} drawn",
                     "valid": f"sp50_valid.fasta.gz: {args.valid_sequences} of the held-out draw",
                     "test": f"sp50_valid.fasta.gz: the other {args.test_sequences} of the held-out draw"}
        for entry in manifest["inputs"]:
            entry["path"] = described["train" if entry["split"] == "random" else entry["split"]] + \
                f" ({args.min_length}..{args.max_length} residues, seed {args.seed}; see SOURCE.md)"
        write_json(output_dir / f"{NAME}_manifest.json", manifest)

        sizes = {s["shards"][0]["file"]: (output_dir / s["shards"][0]["file"]).stat().st_size
                 for s in manifest["splits"].values()}
        command = "python data/make_demo.py" + "".join(
            f" --{k} {v}" for k, v in vars(args).items() if k not in ("source_dir", "output_dir"))
        (output_dir / "SOURCE.md").write_text(
            source_md(manifest, {"train": train_counts, "held_out": held_counts}, args, command, sizes))
    except (TokenizeError, FastaError, OSError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {output_dir}: " + ", ".join(f"{k} {v['sequences']}" for k, v in manifest["splits"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
