"""run_experiments.sh on a folder with one good (tiny) and one broken YAML: both run, both are reported, and the
script exits non-zero because one failed."""
import json
import os
import re
import subprocess
from pathlib import Path

import yaml

from test_train import tiny_data  # noqa: F401  (the session fixture of tiny shards)

ROOT = Path(__file__).resolve().parent.parent


def test_run_experiments_reports_good_and_broken_runs(tiny_data, tmp_path):  # noqa: F811
    experiments = tmp_path / "experiments"
    experiments.mkdir()
    good = dict(data_dir=str(tiny_data), data_name="tiny", log_dir=str(tmp_path / "logs"),
                save_dir=str(tmp_path / "ckpt"), hidden_size=32, num_attention_heads=2, num_hidden_layers=2,
                value_embeddings=1, batch_size=2048, row_length=256, max_length=256, num_workers=0, num_steps=2,
                eval_every=2, log_every=1, untimed_warmup_steps=0, target_loss=3.4)
    (experiments / "a_good.yaml").write_text(yaml.safe_dump(good))
    (experiments / "b_broken.yaml").write_text(yaml.safe_dump({**good, "hiden_size": 64}))
    env = {**os.environ, "NPROC_PER_NODE": "1", "OUT_DIR": str(tmp_path / "out"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", "run_experiments.sh", str(experiments)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env=env, stdin=subprocess.DEVNULL)
    out = proc.stdout
    assert proc.returncode == 1, out + proc.stderr
    assert "=== a_good: exit code 0" in out and re.search(r"=== b_broken: exit code [1-9]", out)
    summary = json.loads((tmp_path / "logs" / "a_good.json").read_text())
    table = out[out.index("name  "):].splitlines()
    good_row = next(line for line in table if line.startswith("a_good"))
    assert good_row.split()[:3] == ["a_good", "ok", f"{summary['final_val_loss']:.4f}"]
    assert f"{summary['tokens_per_s']:,.0f}" in good_row
    broken_row = next(line for line in table if line.startswith("b_broken"))
    assert re.match(r"b_broken\s+failed \(exit [1-9]\d*\)\s+-\s+-\s+-$", broken_row)
    assert table[-1] == "1 of 2 runs ok"
    # The broken run's own message, naming the key, is kept in its console output.
    assert "unknown config key 'hiden_size' (did you mean 'hidden_size'?)" in (tmp_path / "out" /
                                                                              "b_broken.out").read_text()


def test_run_experiments_refuses_a_missing_folder(tmp_path):
    proc = subprocess.run(["bash", "run_experiments.sh", str(tmp_path / "nope")], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and "no such directory" in proc.stderr


def test_every_kept_yaml_is_a_valid_config():
    """Every YAML in example_yamls/ and experiments/ (any depth) passes train.py's strict, typed parser, so a
    typo in a kept config fails here rather than minutes into someone's run."""
    import train

    paths = sorted((ROOT / "example_yamls").glob("*.yaml")) + sorted((ROOT / "experiments").rglob("*.yaml")) \
        + sorted((ROOT / "logs_to_keep").rglob("*.yaml"))
    assert len(paths) >= 8
    for path in paths:
        cfg, given = train.parse_config(["--yaml_path", str(path)])  # each component checks its own rules
        assert given, path
