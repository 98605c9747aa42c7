"""data/download_data.py without the network: a local stand-in for `hf_hub_download` serves a fake hub folder."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import huggingface_hub
from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError

from data.download_data import main, shard_files
from shards import write_shard

SCRIPT = Path(__file__).resolve().parent.parent / "data" / "download_data.py"
EXPECTED_FILES = ["toy_valid_000000.bin", "toy_test_000000.bin", "toy_train_000000.bin", "toy_train_000001.bin"]


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    """A folder laid out like the Hub (repo_id/filename) and a stand-in download that copies from it.

    Returns (hub folder, list of the keyword arguments of every download call).
    """
    hub = tmp_path / "hub" / "Synthyra" / "toy_packed"
    hub.mkdir(parents=True)
    for i, name in enumerate(EXPECTED_FILES):
        write_shard(hub / name, np.full(10 + i, 5, dtype=np.uint8))
    calls = []

    def stand_in(repo_id, filename, *, repo_type, local_dir, token, force_download=False):
        calls.append({"repo_id": repo_id, "filename": filename, "repo_type": repo_type, "token": token,
                      "force_download": force_download})
        source = tmp_path / "hub" / repo_id / filename
        if not source.exists():
            raise RepositoryNotFoundError.__new__(RepositoryNotFoundError)
        Path(local_dir).mkdir(parents=True, exist_ok=True)
        return shutil.copy(source, Path(local_dir) / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", stand_in)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    return hub, calls


def run(output_dir, num_chunks=2, name="toy") -> int:
    return main(["--data_name", name, "--num_chunks", str(num_chunks), "--output_dir", str(output_dir)])


def test_file_names_follow_the_published_layout():
    assert shard_files("toy", 2) == EXPECTED_FILES
    assert shard_files("uniref50", 0) == ["uniref50_valid_000000.bin", "uniref50_test_000000.bin"]


def test_downloads_checks_and_resumes(tmp_path, fake_hub):
    hub, calls = fake_hub
    out = tmp_path / "out"
    assert run(out) == 0
    assert [c["filename"] for c in calls] == EXPECTED_FILES
    assert all(c["repo_id"] == "Synthyra/toy_packed" and c["repo_type"] == "dataset" for c in calls)
    assert all(c["token"] is False for c in calls)  # no HF_TOKEN: send no token, not a stored login
    for name in EXPECTED_FILES:
        assert (out / name).read_bytes() == (hub / name).read_bytes()

    calls.clear()
    assert run(out) == 0
    assert calls == []  # everything present and valid: nothing fetched again

    truncated = out / "toy_train_000001.bin"
    truncated.write_bytes(truncated.read_bytes()[:-3])
    assert run(out) == 0
    assert [(c["filename"], c["force_download"]) for c in calls] == [("toy_train_000001.bin", True)]
    assert truncated.read_bytes() == (hub / "toy_train_000001.bin").read_bytes()


def test_token_comes_from_the_environment_only(tmp_path, fake_hub, monkeypatch, capsys):
    _, calls = fake_hub
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    assert run(tmp_path / "out", num_chunks=0) == 0
    assert {c["token"] for c in calls} == {"hf_secret"}
    assert "hf_secret" not in capsys.readouterr().out
    for flag in ("--token", "--hf_token=abc"):
        assert main(["--data_name", "toy", "--num_chunks", "1", flag, "x"]) == 2
        assert "HF_TOKEN" in capsys.readouterr().err


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_corrupt_download_is_reported(tmp_path, fake_hub, capsys):
    hub, _ = fake_hub
    (hub / "toy_test_000000.bin").write_bytes(b"<html>rate limited</html>")
    assert run(tmp_path / "out") == 1
    line = one_error_line(capsys)
    assert "toy_test_000000.bin" in line and "not a valid shard" in line


def test_missing_repo_is_one_line(tmp_path, fake_hub, capsys):
    assert run(tmp_path / "out", name="nosuch") == 1
    assert "Synthyra/nosuch_packed not found" in one_error_line(capsys)


@pytest.mark.parametrize("error", [LocalEntryNotFoundError("An error happened ... check your connection"),
                                   ConnectionError("[Errno -2] Name or service not known")])
def test_offline_is_one_line(tmp_path, monkeypatch, capsys, error):
    def offline(*args, **kwargs):
        raise error

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    assert run(tmp_path / "out") == 1
    line = one_error_line(capsys)
    assert "toy_valid_000000.bin" in line and ("cannot reach" in line or "Name or service" in line)


def test_really_offline_subprocess(tmp_path):
    """The real huggingface_hub with HF_HUB_OFFLINE=1: no network touched, exit 1 and a single line."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("HF_TOKEN", None)
    result = subprocess.run([sys.executable, str(SCRIPT), "--data_name", "omg_prot50", "--num_chunks", "1",
                             "--output_dir", str(tmp_path / "out")], capture_output=True, text=True, env=env,
                            timeout=120)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot reach the Hugging Face Hub" in lines[0] and "omg_prot50_valid" in lines[0]
