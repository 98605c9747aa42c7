"""Golden runs: short fixed-seed CPU runs whose every train and validation loss is kept in logs_to_keep/golden/.

A change that must not alter the numbers (a refactor, a renamed option, a moved function) proves it here: the
rerun's losses equal the kept ones. Two runs cover the two recipes (speedrun: Muon, UNet, value embeddings, an
undone warm-up; esm2: AdamW, LayerNorm, token dropout, BERT corruption, grad clipping).

A change that is meant to alter the numbers rewrites the files, and its commit says why:
    python tests/test_golden_run.py --write

Each CPU kind keeps its own golden (`{name}.json`: the CPU of the last `--write`, the CPU of sessions 1–7 until then;
`{name}.cpu-<id>.json`: others, added by `--add-cpu`; each with the `cpu_id` it was written on, where recorded). The speedrun recipe is chaotic across CPUs: Muon's Newton–Schulz iteration amplifies
the last-bit differences between two CPUs' matmul kernels, so after one optimiser step the two trajectories differ by
1e-4 and by 12 steps by 3e-2 (measured between "AMD EPYC" of sessions 1–7 and `AuthenticAMD family 26 model 2`),
while the ESM2 recipe's stay within 3e-7. A rerun must repeat one of its run's goldens; a maths change matches
none. On a new kind of CPU, from a commit whose numbers are known good (every golden passes on a known CPU):
    python tests/test_golden_run.py --add-cpu
`--write` deletes every golden of the run and writes this CPU's: only for a change meant to alter the numbers.
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
            "controls": result["controls"], "tokens": result["tokens"], "steps": result["steps"],
            "cpu_id": result["provenance"]["hardware"].get("cpu_id")}


def goldens(name: str) -> list[Path]:
    """Every kept golden of the run: one per CPU kind."""
    return sorted(GOLDEN.glob(f"{name}.json")) + sorted(GOLDEN.glob(f"{name}.cpu-*.json"))


def deviations(now: dict, kept: dict) -> list[str]:
    """Where `now` departs from one golden by more than TOLERANCE (empty: it repeats that golden)."""
    if (now["steps"], now["tokens"]) != (kept["steps"], kept["tokens"]):
        return [f"steps/tokens {now['steps']}/{now['tokens']} vs {kept['steps']}/{kept['tokens']}"]
    out = []
    for key in ("train_loss", "val_loss", "val_accuracy"):
        if now[key].keys() != kept[key].keys():
            out.append(f"{key}: steps {sorted(now[key])} vs {sorted(kept[key])}")
            continue
        out += [f"{key} at step {step}: {now[key][step]:.7f} vs {value:.7f}" for step, value in kept[key].items()
                if abs(now[key][step] - value) > TOLERANCE]
    if now["controls"] != pytest.approx(kept["controls"], abs=1e-9):
        out.append("controls differ")
    return out


def cpu_slug(cpu: str | None) -> str:
    return "cpu-" + "".join(c if c.isalnum() else "-" for c in (cpu or "unknown")).strip("-").lower()


@pytest.mark.parametrize("name", RUNS)
def test_golden_run_repeats_its_losses(name, tmp_path):
    kept = {path: json.loads(path.read_text()) for path in goldens(name)}
    assert kept, f"no golden for {name} in {GOLDEN}"
    now = golden_losses(name, tmp_path)
    misses = {path.name: deviations(now, golden) for path, golden in kept.items()}
    assert any(not miss for miss in misses.values()), (
        f"{name}: the rerun repeats none of its goldens (one per CPU kind; this CPU: {now['cpu_id']}). First "
        f"deviations: " + "; ".join(f"{file}: {miss[:2]} ({len(miss)} in all)" for file, miss in misses.items())
        + ". A maths change rewrites them (--write); a new kind of CPU adds one from a known-good commit (--add-cpu)")


def test_a_golden_is_missed_by_a_changed_number(tmp_path):
    """The comparison the golden test rests on: a loss moved by more than the tolerance is a deviation."""
    kept = json.loads(goldens("esm2")[0].read_text())
    assert deviations(kept, kept) == []
    moved = json.loads(json.dumps(kept))
    step = next(iter(moved["train_loss"]))
    moved["train_loss"][step] += 3 * TOLERANCE
    assert deviations(moved, kept) == [f"train_loss at step {step}: {moved['train_loss'][step]:.7f} vs "
                                       f"{kept['train_loss'][step]:.7f}"]
    assert cpu_slug("AuthenticAMD family 26 model 2 stepping 1, avx512") == \
        "cpu-authenticamd-family-26-model-2-stepping-1--avx512"


if __name__ == "__main__" and sys.argv[1:] in (["--write"], ["--add-cpu"]):
    import subprocess
    import tempfile
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                                capture_output=True, text=True).stdout.strip())
    for run in RUNS:
        with tempfile.TemporaryDirectory() as tmp:
            losses = golden_losses(run, Path(tmp))
        losses["written_at"] = {"commit": commit, "dirty": dirty}
        if sys.argv[1] == "--write":
            for old in goldens(run):
                old.unlink()
            path = GOLDEN / f"{run}.json"
        else:
            matched = [p.name for p in goldens(run) if not deviations(losses, json.loads(p.read_text()))]
            if matched:
                print(f"{run}: this CPU repeats {matched}: nothing to add")
                continue
            path = GOLDEN / f"{run}.{cpu_slug(losses['cpu_id'])}.json"
        path.write_text(json.dumps(losses, indent=1) + "\n")
        print(f"wrote {path}")
