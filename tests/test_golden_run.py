"""Golden runs: short fixed-seed CPU runs whose every train and validation loss is kept in logs_to_keep/golden/.

A change that must not alter the numbers (a refactor, a renamed option, a moved function) proves it here: the
rerun's losses equal the kept ones. Two runs cover the two recipes (speedrun: Muon, UNet, value embeddings, an
undone warm-up; esm2: AdamW, LayerNorm, token dropout, BERT corruption, grad clipping).

A change that is meant to alter the numbers rewrites the files, and its commit says why:
    python tests/test_golden_run.py --write
"""
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "logs_to_keep" / "golden"
RUNS = ("speedrun", "esm2")
# Same machine, same torch: the losses are bitwise equal. Across CPUs (another BLAS kernel for the same matmul)
# float sums may round differently, and 12 steps of training can grow 1e-7 into 1e-6; any change to the maths
# (an LR, a mask, an init) moves these losses by 1e-3 or more.
TOLERANCE = 2e-5

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def golden_losses(name: str, tmp: Path) -> dict:
    """Run logs_to_keep/golden/{name}.yaml on one thread and return its losses."""
    import torch
    import train
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = train.main(["--yaml_path", str(GOLDEN / f"{name}.yaml"), "--data_dir", str(ROOT / "data" / "demo"), "--log_dir", str(tmp / "logs"),
                             "--save_dir", str(tmp / "ckpt"), "--log_name", name])
    finally:
        torch.set_num_threads(threads)
    assert result["status"] == "ok", result["message"]
    return {"train_loss": {str(e["step"]): e["loss"] for e in result["train"]},
            "val_loss": {str(e["step"]): e["loss"] for e in result["val"]},
            "val_accuracy": {str(e["step"]): e["accuracy"] for e in result["val"]},
            "controls": result["controls"], "tokens": result["tokens"], "steps": result["steps"]}


@pytest.mark.parametrize("name", RUNS)
def test_golden_run_repeats_its_losses(name, tmp_path):
    kept = json.loads((GOLDEN / f"{name}.json").read_text())
    now = golden_losses(name, tmp_path)
    assert now["steps"] == kept["steps"] and now["tokens"] == kept["tokens"]
    for key in ("train_loss", "val_loss", "val_accuracy"):
        assert now[key].keys() == kept[key].keys(), key
        for step, value in kept[key].items():
            assert now[key][step] == pytest.approx(value, abs=TOLERANCE), f"{key} at step {step}"
    assert now["controls"] == pytest.approx(kept["controls"], abs=1e-9)


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    import subprocess
    import tempfile
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                                capture_output=True, text=True).stdout.strip())
    for run in RUNS:
        with tempfile.TemporaryDirectory() as tmp:
            losses = golden_losses(run, Path(tmp))
        losses["written_at"] = {"commit": commit, "dirty": dirty}
        (GOLDEN / f"{run}.json").write_text(json.dumps(losses, indent=1) + "\n")
        print(f"wrote {GOLDEN / f'{run}.json'}")
