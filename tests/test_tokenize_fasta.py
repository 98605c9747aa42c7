"""data/tokenize_fasta.py against a plain-Python FASTA reader and a hand-written shard decoder."""
import gzip
import hashlib
import json
import struct
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from data.tokenize_fasta import TokenizeError, tokenize_fasta, verify

SCRIPT = Path(__file__).resolve().parent.parent / "data" / "tokenize_fasta.py"
DEMO = Path(__file__).resolve().parent.parent / "data" / "demo"
ESM2_TOKENS = ["<cls>", "<pad>", "<eos>", "<unk>", *"LAGVSERTIDPKQNFYMHWCXBUZO", ".", "-", "<null_1>", "<mask>"]
LETTERS = set("LAGVSERTIDPKQNFYMHWCXBUZO.-")

# Lowercase, unknown letters (J, *, digits), an empty record, a header-only record at the end, multi-line
# records, blank lines, Windows line endings and a record split by an old-Mac '\r'.
MESSY_FASTA = (
    "\r\n"
    ">sp|P1 first\r\nMKTAYIAKQR\r\nqisfvkshfs\r\n\r\n"
    ">empty\r\n"
    ">sp|P2 unknowns\nACDJJ*\nWY12\n"
    ">short\nMK\n"
    ">sp|P3 one line\nmktayiakqrqisfvkshfsrqleerlglieVQ\n"
    ">sp|P4 mac\rGGGHHH\rKKK\r"
    ">trailing-empty\n"
)


def reference_records(text: str) -> list[str]:
    """Every record's residues, in order, by the simplest reading of FASTA (no streaming, no numpy)."""
    records = []
    for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        if line.startswith(">"):
            records.append("")
        elif line.strip():
            records[-1] += line.strip()
    return records


def reference_tokens(residues: str) -> str:
    """What a shard should hold for a sequence, spelled with the vocabulary's strings."""
    return "<cls>" + "".join(c.upper() if c.upper() in LETTERS else "<unk>" for c in residues) + "<eos>"


def decode_shard_file(path: Path) -> list[str]:
    """A shard's sequences, decoded without shards.py or vocab.py: header by struct, body split at <eos>."""
    raw = path.read_bytes()
    magic, version, n_tokens = struct.unpack("<3i", raw[:12])
    assert (magic, version, len(raw)) == (20240520, 1, 1024 + n_tokens)
    text = "".join(ESM2_TOKENS[b] + ("\n" if b == 2 else "") for b in raw[1024:])
    return text.splitlines()


def shard_sequences(output_dir: Path, manifest: dict, split: str) -> list[str]:
    return [s for shard in manifest["splits"][split]["shards"] for s in decode_shard_file(output_dir / shard["file"])]


def write_fasta(path: Path, text: str, gzipped: bool = False) -> Path:
    data = text.encode("utf-8")
    path.write_bytes(gzip.compress(data, mtime=0) if gzipped else data)
    return path


def test_messy_fasta_matches_reference(tmp_path):
    path = write_fasta(tmp_path / "messy.fa", MESSY_FASTA)
    manifest = tokenize_fasta([path], tmp_path / "out", "m", min_length=3)
    records = reference_records(MESSY_FASTA)
    kept = [r for r in records if len(r) >= 3]
    assert len(records) == 7 and len(kept) == 4
    assert shard_sequences(tmp_path / "out", manifest, "train") == [reference_tokens(r) for r in kept]
    assert manifest["records"] == 7
    assert manifest["skipped"] == {"empty": 2, "too_short": 1}
    assert manifest["changed"] == {"sequences_with_unknown": 1, "unknown_characters": 5,
                                   "sequences_with_lowercase": 2, "lowercase_characters": 10 + 31}
    assert verify(tmp_path / "out" / "m_manifest.json")["sequences"] == 4


def test_gzip_detected_by_content_not_name(tmp_path):
    gz_named_fa = write_fasta(tmp_path / "a.fa", MESSY_FASTA, gzipped=True)
    plain_named_gz = write_fasta(tmp_path / "b.fasta.gz", MESSY_FASTA)
    a = tokenize_fasta([gz_named_fa], tmp_path / "a", "a")
    b = tokenize_fasta([plain_named_gz], tmp_path / "b", "b")
    assert shard_sequences(tmp_path / "a", a, "train") == shard_sequences(tmp_path / "b", b, "train")
    assert a["splits"]["train"]["shards"][0]["sha256"] == b["splits"]["train"]["shards"][0]["sha256"]


def random_fasta(n: int, seed: int, max_length: int = 40) -> str:
    rng = np.random.default_rng(seed)
    return "".join(f">s{i}\n" + "".join(rng.choice(list("ACDEFGHIKLMNPQRSTVWY"), size=int(rng.integers(0, max_length))))
                   + "\n" for i in range(n))


def test_sequences_never_split_and_long_one_gets_own_shard(tmp_path):
    text = random_fasta(60, seed=0) + ">long\n" + "W" * 250 + "\n" + random_fasta(20, seed=1)
    path = write_fasta(tmp_path / "x.fa", text)
    budget = 64
    manifest = tokenize_fasta([path], tmp_path / "out", "x", shard_tokens=budget)
    shards = manifest["splits"]["train"]["shards"]
    assert len(shards) > 3
    for shard in shards:
        decoded = decode_shard_file(tmp_path / "out" / shard["file"])
        assert len(decoded) == shard["sequences"]  # whole <cls> ... <eos> sequences only
        assert all(s.startswith("<cls>") and s.endswith("<eos>") for s in decoded)
        assert shard["tokens"] <= budget or (shard["sequences"] == 1 and decoded[0] == reference_tokens("W" * 250))
    assert any(shard["tokens"] == 252 for shard in shards)
    kept = [r for r in reference_records(text) if r]
    assert shard_sequences(tmp_path / "out", manifest, "train") == [reference_tokens(r) for r in kept]


def test_manifest_counts_add_up(tmp_path):
    text = random_fasta(500, seed=2)
    path = write_fasta(tmp_path / "x.fa", text)
    out = tmp_path / "out"
    manifest = tokenize_fasta([path], out, "x", valid_sequences=40, test_sequences=30, shard_tokens=500,
                              min_length=5, seed=3)
    assert manifest == json.loads((out / "x_manifest.json").read_text())
    splits = manifest["splits"]
    for split in splits.values():
        assert split["sequences"] == sum(s["sequences"] for s in split["shards"])
        assert split["tokens"] == sum(s["tokens"] for s in split["shards"])
        assert split["residues"] == split["tokens"] - 2 * split["sequences"]
    assert (splits["valid"]["sequences"], splits["test"]["sequences"]) == (40, 30)
    records = reference_records(text)
    assert manifest["records"] == len(records) == 500
    assert sum(s["sequences"] for s in splits.values()) + sum(manifest["skipped"].values()) == 500
    assert manifest["skipped"] == {"empty": records.count(""), "too_short": sum(0 < len(r) < 5 for r in records)}
    assert sum(s["residues"] for s in splits.values()) == sum(len(r) for r in records if len(r) >= 5)
    on_disk = {p.name for p in out.glob("*.bin")}
    assert on_disk == {shard["file"] for s in splits.values() for shard in s["shards"]}
    all_decoded = Counter(seq for split in splits for seq in shard_sequences(out, manifest, split))
    assert all_decoded == Counter(reference_tokens(r) for r in records if len(r) >= 5)


def held_out(out: Path, manifest: dict) -> tuple[list[str], list[str]]:
    return shard_sequences(out, manifest, "valid"), shard_sequences(out, manifest, "test")


def test_valid_test_draw_is_reproducible_and_depends_on_seed(tmp_path):
    path = write_fasta(tmp_path / "x.fa", random_fasta(300, seed=4, max_length=200))
    runs = {}
    for label, seed in (("a", 7), ("b", 7), ("c", 8)):
        out = tmp_path / label
        runs[label] = held_out(out, tokenize_fasta([path], out, "x", valid_sequences=25, test_sequences=25, seed=seed))
    assert runs["a"] == runs["b"]
    assert runs["a"] != runs["c"]
    valid, test = runs["a"]
    assert len(valid) == len(test) == 25 and not set(valid) & set(test)


def test_whole_files_for_valid_and_test(tmp_path):
    train = write_fasta(tmp_path / "train.fa", random_fasta(50, seed=5))
    valid = write_fasta(tmp_path / "valid.fa", ">v1\nMMMM\n>v2\nKKKK\n")
    test = write_fasta(tmp_path / "test.fa", ">t1\nWWWW\n")
    manifest = tokenize_fasta([train], tmp_path / "out", "x", valid_inputs=[valid], test_inputs=[test])
    assert held_out(tmp_path / "out", manifest) == ([reference_tokens("MMMM"), reference_tokens("KKKK")],
                                                     [reference_tokens("WWWW")])
    assert [e["split"] for e in manifest["inputs"]] == ["random", "valid", "test"]
    verify(tmp_path / "out" / "x_manifest.json")


def test_real_sequences(tmp_path):
    """A few thousand real records (the embedded demo set's train sequences, written back as gzipped FASTA with
    60-residue lines): shards equal the plain-Python reading, and `verify` agrees."""
    decoded = decode_shard_file(DEMO / "demo_train_000000.bin")[:3000]
    sequences = [s.removeprefix("<cls>").removesuffix("<eos>") for s in decoded]
    assert len(sequences) == 3000 and not any("<" in s for s in sequences)  # residue letters only
    text = "".join(f">sp|{i} demo\n" + "\n".join(s[j:j + 60] for j in range(0, len(s), 60)) + "\n"
                   for i, s in enumerate(sequences))
    path = write_fasta(tmp_path / "real.fasta.gz", text, gzipped=True)
    out = tmp_path / "out"
    manifest = tokenize_fasta([path], out, "sp", valid_sequences=100, test_sequences=100, shard_tokens=200_000,
                              min_length=100, seed=0)
    records = reference_records(text)
    assert records == sequences
    decoded = Counter(seq for split in ("train", "valid", "test") for seq in shard_sequences(out, manifest, split))
    assert decoded == Counter(reference_tokens(r) for r in records if len(r) >= 100)
    assert manifest["skipped"]["too_short"] == sum(len(r) < 100 for r in records) > 0
    assert len(manifest["splits"]["train"]["shards"]) > 1
    assert verify(out / "sp_manifest.json")["sequences"] == sum(decoded.values())


def test_verify_catches_a_changed_or_missing_sequence(tmp_path):
    from shards import read_shard, write_shard

    path = write_fasta(tmp_path / "x.fa", random_fasta(100, seed=6))
    out = tmp_path / "out"
    manifest = tokenize_fasta([path], out, "x")
    manifest_path = out / "x_manifest.json"
    shard = out / manifest["splits"]["train"]["shards"][0]["file"]
    tokens = np.array(read_shard(shard, mmap=False))

    def rewrite(new_tokens, sequences):  # a consistent shard + manifest: only the contents are wrong
        entry = manifest["splits"]["train"]["shards"][0]
        entry["sha256"] = write_shard(shard, new_tokens)
        entry["tokens"], entry["sequences"] = new_tokens.size, sequences
        manifest["splits"]["train"]["sequences"] = sequences
        manifest_path.write_text(json.dumps(manifest))

    for replacement in (22 if tokens[1] != 22 else 23, 32):  # one residue changed, or turned into <mask>
        swapped = tokens.copy()
        swapped[1] = replacement
        rewrite(swapped, manifest["splits"]["train"]["sequences"])
        with pytest.raises(TokenizeError, match="not the inputs"):
            verify(manifest_path)
    first_end = int(np.flatnonzero(tokens == 2)[0]) + 1
    rewrite(tokens[first_end:], manifest["splits"]["train"]["sequences"] - 1)  # first sequence dropped
    with pytest.raises(TokenizeError, match="not the inputs"):
        verify(manifest_path)


@pytest.mark.parametrize("text, words", [
    ("hello world\n>a\nMK\n", "line 1 comes before the first '>'"),
    ("", "no FASTA records"),
    ("\n\n", "no FASTA records"),
    (">a\n>b\n", "every record is empty"),
])
def test_bad_inputs_raise_naming_the_file(tmp_path, text, words):
    path = write_fasta(tmp_path / "bad.fa", text)
    with pytest.raises(TokenizeError) as error:
        tokenize_fasta([path], tmp_path / "out", "x")
    assert str(path) in str(error.value) and words in str(error.value)
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_other_refusals(tmp_path):
    path = write_fasta(tmp_path / "x.fa", random_fasta(10, seed=7))
    with pytest.raises(TokenizeError, match="20 valid .* kept records"):
        tokenize_fasta([path], tmp_path / "a", "x", valid_sequences=20)
    tokenize_fasta([path], tmp_path / "b", "x")
    with pytest.raises(TokenizeError, match="already holds outputs named 'x'"):
        tokenize_fasta([path], tmp_path / "b", "x")
    broken = tmp_path / "broken.fa.gz"
    broken.write_bytes(gzip.compress(random_fasta(2000, seed=8).encode())[:-100])
    with pytest.raises(TokenizeError, match="broken.fa.gz: corrupt or truncated gzip"):
        tokenize_fasta([broken], tmp_path / "c", "x")


def run_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True, timeout=60)


def test_cli_errors_are_one_line_naming_the_file(tmp_path):
    missing = tmp_path / "missing.fa"
    empty = write_fasta(tmp_path / "empty.fa", "")
    for path in (missing, empty):
        result = run_cli(path, "--output_dir", tmp_path / "out", "--name", "x")
        assert result.returncode == 1
        assert len(result.stderr.strip().splitlines()) == 1 and str(path) in result.stderr


def test_cli_success_and_verify(tmp_path):
    path = write_fasta(tmp_path / "x.fa", MESSY_FASTA)
    result = run_cli(path, "--output_dir", tmp_path / "out", "--name", "x", "--valid_sequences", "1", "--verify")
    assert result.returncode == 0, result.stderr
    assert "verified" in result.stdout and (tmp_path / "out" / "x_valid_000000.bin").exists()


def test_embedded_demo_data_is_intact_and_rebuilds_identically(tmp_path, shared_data):
    """data/demo is what `data/make_demo.py` documents: same sha256 when rebuilt, and readable shards."""
    from data import make_demo

    demo = Path(__file__).resolve().parent.parent / "data" / "demo"
    manifest = json.loads((demo / "demo_manifest.json").read_text())
    assert make_demo.main(["--source_dir", str(shared_data / "swissprot2014_sp50"), "--output_dir", str(tmp_path)]) == 0
    rebuilt = json.loads((tmp_path / "demo_manifest.json").read_text())
    assert rebuilt == manifest
    for split, info in manifest["splits"].items():
        (shard,) = info["shards"]
        assert hashlib.sha256((demo / shard["file"]).read_bytes()).hexdigest() == shard["sha256"]
        assert len(decode_shard_file(demo / shard["file"])) == info["sequences"]
    assert (manifest["splits"]["train"]["sequences"], manifest["splits"]["valid"]["sequences"]) == (4000, 300)
    assert sum(p.stat().st_size for p in demo.iterdir()) < 3_000_000
