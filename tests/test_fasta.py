"""fasta.py, the one FASTA reader, against records written out by hand."""
import gzip

import pytest

from fasta import FastaError, Record, parse_fasta, read_fasta

# Multi-line records, blank lines, Windows and old-Mac line endings, lowercase, an empty record, a trailing one.
MESSY = ("\r\n>sp|P1 first\r\nMKTAYIAKQR\r\nqisfvk\r\n\r\n>empty\r\n>P2 mac\rGGG\rHHH\r>P3\nACD EF\n  \n>last\n")
EXPECTED = [Record("sp|P1 first", "MKTAYIAKQRqisfvk"), Record("empty", ""), Record("P2 mac", "GGGHHH"),
            Record("P3", "ACD EF"), Record("last", "")]


def write(path, text: str, gzipped: bool = False):
    path.write_bytes(gzip.compress(text.encode(), mtime=0) if gzipped else text.encode())
    return path


def test_records_are_read_as_written(tmp_path):
    assert list(read_fasta(write(tmp_path / "x.fa", MESSY))) == EXPECTED


def test_gzip_is_recognised_by_content_not_name(tmp_path):
    gz_named_plain = write(tmp_path / "a.fa.gz", MESSY)
    plain_named_gz = write(tmp_path / "b.fa", MESSY, gzipped=True)
    assert list(read_fasta(gz_named_plain)) == list(read_fasta(plain_named_gz)) == EXPECTED


def test_limit_stops_early(tmp_path):
    path = write(tmp_path / "x.fa", MESSY, gzipped=True)
    assert list(read_fasta(path, limit=2)) == EXPECTED[:2]
    assert list(read_fasta(path, limit=99)) == EXPECTED
    with pytest.raises(ValueError, match="limit"):
        list(read_fasta(path, limit=0))


def test_progress_counts_every_byte(tmp_path):
    class Bar:
        n = 0

        def update(self, k):
            self.n += k

    path = write(tmp_path / "x.fa.gz", "".join(f">s{i}\nMKV\n" for i in range(3000)), gzipped=True)
    bar = Bar()
    assert sum(1 for _ in read_fasta(path, progress=bar)) == 3000
    assert bar.n == path.stat().st_size


@pytest.mark.parametrize("text, words", [
    ("hello\n>a\nMK\n", "line 1 comes before the first '>'"),
    ("\n\nMK\n>a\nMK\n", "line 3 comes before the first '>'"),
    ("", "no FASTA records"),
    ("\n \n", "no FASTA records"),
])
def test_bad_files_name_the_file_and_line(tmp_path, text, words):
    path = write(tmp_path / "bad.fa", text)
    with pytest.raises(FastaError) as error:
        list(read_fasta(path))
    assert str(path) in str(error.value) and words in str(error.value)


def test_missing_and_corrupt_files_are_named(tmp_path):
    with pytest.raises(FastaError, match="missing.fa: no such file"):
        list(read_fasta(tmp_path / "missing.fa"))
    with pytest.raises(FastaError, match="not a regular file"):
        list(read_fasta(tmp_path))
    broken = tmp_path / "broken.fa.gz"
    broken.write_bytes(gzip.compress("".join(f">s{i}\nMKVLAAGG\n" for i in range(5000)).encode())[:-100])
    with pytest.raises(FastaError, match="broken.fa.gz: corrupt or truncated gzip"):
        list(read_fasta(broken))


def test_parse_fasta_reads_any_lines_and_names_the_source():
    assert list(parse_fasta(["> a x=1\n", "MK\n", "V\n"], "zip:member")) == [Record(" a x=1", "MKV")]
    with pytest.raises(FastaError, match="zip:member: line 1"):
        list(parse_fasta(["MK\n"], "zip:member"))
