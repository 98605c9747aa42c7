"""shards.py: the byte layout against struct.unpack, round trips, and every header check naming the file."""
import hashlib
import struct

import numpy as np
import pytest

from shards import HEADER_BYTES, ShardError, find_shards, read_header, read_shard, shard_name, write_shard


def header_bytes(magic=20240520, version=1, n_tokens=0) -> bytes:
    """The header written out by hand: 256 little-endian int32, the first three set."""
    return struct.pack("<256i", magic, version, n_tokens, *([0] * 253))


@pytest.mark.parametrize("n_tokens", [0, 1, 5000])
def test_round_trip_and_exact_layout(tmp_path, n_tokens):
    tokens = np.random.default_rng(n_tokens).integers(0, 33, size=n_tokens, dtype=np.uint8)
    path = tmp_path / "x_train_000000.bin"
    sha256 = write_shard(path, tokens)
    raw = path.read_bytes()
    assert raw == header_bytes(n_tokens=n_tokens) + tokens.tobytes()
    assert sha256 == hashlib.sha256(raw).hexdigest()
    assert read_header(path) == n_tokens
    for mmap in (True, False):
        assert np.array_equal(read_shard(path, mmap=mmap), tokens)
    assert not list(tmp_path.glob("*.tmp"))  # the atomic write left no temporary file


def write_raw(tmp_path, name: str, data: bytes):
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("case, data, words", [
    ("wrong_magic", header_bytes(magic=12345, n_tokens=3) + b"\x00\x05\x02", "magic number 12345"),
    ("wrong_version", header_bytes(version=2, n_tokens=3) + b"\x00\x05\x02", "version 2"),
    ("truncated_body", header_bytes(n_tokens=10) + b"\x00\x05\x02", "header says 10 tokens but the file holds 3"),
    ("trailing_bytes", header_bytes(n_tokens=1) + b"\x00\x05\x02", "header says 1 tokens but the file holds 3"),
    ("truncated_header", header_bytes(n_tokens=3)[:500], "shorter than the 1024-byte header"),
    ("foreign_text", b">sp|P12345\nMKTAYIAKQR\n" * 100, "magic number"),
    ("empty_file", b"", "shorter than the 1024-byte header"),
])
def test_bad_files_raise_shard_error_naming_the_file(tmp_path, case, data, words):
    path = write_raw(tmp_path, f"{case}.bin", data)
    for read in (read_header, read_shard):
        with pytest.raises(ShardError) as error:
            read(path)
        assert str(path) in str(error.value) and words in str(error.value)
        assert "\n" not in str(error.value)


def test_missing_file(tmp_path):
    with pytest.raises(ShardError, match="no such shard file"):
        read_shard(tmp_path / "absent.bin")


def test_names_and_finding(tmp_path):
    assert shard_name("omg_prot50", "train", 7) == "omg_prot50_train_000007.bin"
    with pytest.raises(ValueError):
        shard_name("x", "training", 0)
    for i in (2, 0, 1):
        write_shard(tmp_path / shard_name("x", "train", i), np.zeros(4, np.uint8))
    write_shard(tmp_path / shard_name("x", "valid", 0), np.zeros(4, np.uint8))
    assert [p.name for p in find_shards(tmp_path, "x", "train")] == [shard_name("x", "train", i) for i in range(3)]
    with pytest.raises(FileNotFoundError, match="x_test_"):
        find_shards(tmp_path, "x", "test")


def test_header_is_1024_bytes():
    assert HEADER_BYTES == len(header_bytes()) == 1024
