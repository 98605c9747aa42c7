"""The one FASTA reader: streaming, plain or gzipped, every error naming the file and line.

    for record in read_fasta("sp50_valid.fasta.gz", limit=1000):    # Record(header, residues)
        ...
    records = list(parse_fasta(text_lines, source="archive.zip:splits/x.fasta"))    # any iterable of lines

Gzip is recognised by its magic bytes, not the file name. Sequences may span lines, with any line ending
(\\n, \\r\\n, \\r) and any letter case (kept as written: encoding is vocab.py's job). Blank lines are ignored;
any other line before the first '>' header means the input is not FASTA. A header with no sequence lines is a
record with empty residues: callers that skip such records count them. Memory is one record, whatever the file size.
"""
import contextlib
import gzip
import io
import zlib
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple

GZIP_MAGIC = b"\x1f\x8b"
WHITESPACE = " \t\r\n\v\f"  # ASCII only: any other character in a sequence line is a residue (maybe unknown)
PROGRESS_EVERY = 1024  # records between progress updates (a tell() per record would cost more than it shows)


class FastaError(ValueError):
    """A file that is missing, not FASTA, or corrupt; the message names the file (and the line)."""


class Record(NamedTuple):
    header: str  # the header line without '>' and line ending
    residues: str  # the sequence lines joined, outer ASCII whitespace removed


@contextlib.contextmanager
def open_bytes(path):
    """Yield (decompressed binary stream, underlying raw file) for a plain or gzipped file.

    The raw file's tell() is the number of bytes read from disk, which is what a progress bar counts.
    """
    path = Path(path)
    if not path.is_file():
        raise FastaError(f"{path}: no such file" if not path.exists() else f"{path}: not a regular file")
    with open(path, "rb") as raw:
        is_gzip = raw.read(2) == GZIP_MAGIC
        raw.seek(0)
        if not is_gzip:
            yield raw, raw
            return
        with gzip.GzipFile(fileobj=raw) as stream:
            try:
                yield stream, raw
            except (gzip.BadGzipFile, EOFError, zlib.error) as e:
                raise FastaError(f"{path}: corrupt or truncated gzip data ({e})") from None


def parse_fasta(lines: Iterable[str], source) -> Iterator[Record]:
    """The records of FASTA text lines; `source` names the input in error messages."""
    header, parts = None, []
    for line_no, line in enumerate(lines, 1):
        if line.startswith(">"):
            if header is not None:
                yield Record(header, "".join(parts))
            header, parts = line[1:].rstrip(WHITESPACE), []
            continue
        line = line.strip(WHITESPACE)
        if not line:
            continue
        if header is None:
            raise FastaError(f"{source}: line {line_no} comes before the first '>' header; is this a FASTA file?")
        parts.append(line)
    if header is not None:
        yield Record(header, "".join(parts))


def read_fasta(path, *, limit: int | None = None, progress=None) -> Iterator[Record]:
    """Stream the records of one FASTA file, at most `limit` of them (None = all).

    progress: an optional tqdm bar counting bytes read from disk. A file with no record at all is an error.
    """
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be None or >= 1, got {limit}")
    with open_bytes(path) as (stream, raw):
        text = io.TextIOWrapper(stream, encoding="utf-8", errors="replace", newline=None)  # \n, \r\n, \r
        n_records, last_pos = 0, 0
        for record in parse_fasta(text, path):
            n_records += 1
            if progress is not None and n_records % PROGRESS_EVERY == 0:
                progress.update(raw.tell() - last_pos)
                last_pos = raw.tell()
            yield record
            if n_records == limit:
                break
        if progress is not None:
            progress.update(raw.tell() - last_pos)
    if n_records == 0:
        raise FastaError(f"{path}: no FASTA records (empty file?)")
