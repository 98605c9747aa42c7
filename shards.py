"""The .bin shard format shared with the community's OMGprot50 / UniRef50 packed shards.

    header: 256 little-endian int32 = [20240520 (magic), 1 (version), n_tokens, 0, ...]   (1024 bytes)
    body:   n_tokens uint8 token ids; each sequence stored whole as <cls> residues <eos>

Files are named `{name}_{split}_{index:06d}.bin`. Every reader goes through `read_shard`, which checks the
magic, version and length and names the file in its error.
"""
import hashlib
import os
from pathlib import Path

import numpy as np

MAGIC = 20240520
VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
SPLITS = ("train", "valid", "test")


class ShardError(ValueError):
    """A shard file that is missing, truncated or not in our format. The message names the file."""


def shard_name(name: str, split: str, index: int) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return f"{name}_{split}_{index:06d}.bin"


def write_shard(path, tokens: np.ndarray) -> str:
    """Write `tokens` (uint8) as a shard, atomically (temp file + rename). Returns the file's sha256."""
    tokens = np.ascontiguousarray(tokens, dtype=np.uint8)
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[0], header[1], header[2] = MAGIC, VERSION, tokens.size
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    digest = hashlib.sha256()
    with open(tmp, "wb") as f:
        for part in (header.tobytes(), tokens.tobytes()):
            f.write(part)
            digest.update(part)
    os.replace(tmp, path)
    return digest.hexdigest()


def read_header(path) -> int:
    """Check a shard's header and size; return its number of tokens. Raises ShardError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ShardError(f"{path}: no such shard file")
    size = path.stat().st_size
    if size < HEADER_BYTES:
        raise ShardError(f"{path}: {size} bytes is shorter than the {HEADER_BYTES}-byte header (truncated?)")
    header = np.fromfile(path, dtype="<i4", count=HEADER_INTS)
    if header[0] != MAGIC:
        raise ShardError(f"{path}: magic number {header[0]} is not {MAGIC}; not a plm-speedrun/OMGprot50 shard")
    if header[1] != VERSION:
        raise ShardError(f"{path}: format version {header[1]} is not supported (expected {VERSION})")
    n_tokens = int(header[2])
    if n_tokens < 0 or size != HEADER_BYTES + n_tokens:
        raise ShardError(f"{path}: header says {n_tokens} tokens but the file holds {size - HEADER_BYTES} "
                         "(truncated or corrupt)")
    return n_tokens


def read_shard(path, mmap: bool = True) -> np.ndarray:
    """The checked token array of a shard, shape (n_tokens,) uint8 (memory-mapped by default)."""
    n_tokens = read_header(path)
    if mmap and n_tokens:
        return np.memmap(path, dtype=np.uint8, mode="r", offset=HEADER_BYTES, shape=(n_tokens,))
    with open(path, "rb") as f:
        f.seek(HEADER_BYTES)
        return np.frombuffer(f.read(), dtype=np.uint8).copy()


def find_shards(data_dir, name: str, split: str) -> list[Path]:
    """Sorted shard paths of one split; a FileNotFoundError naming the glob when there are none."""
    pattern = f"{name}_{split}_*.bin"
    paths = sorted(Path(data_dir).glob(pattern))
    if not paths:
        raise FileNotFoundError(f"no shards match {Path(data_dir) / pattern}")
    return paths


def sha256_file(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
