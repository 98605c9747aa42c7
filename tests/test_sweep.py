"""benchmarks/sweep.py: the choice of LR and the edge rule against hand-worked grids, resuming without rerunning,
failed runs, refused flags, and one real (tiny) sweep through train.py."""
import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import sweep  # noqa: E402


def test_pick_and_the_edge_rule():
    assert sweep.pick({1e-3: [2.9], 3e-3: [2.8], 1e-2: [2.85]}) == (3e-3, None)
    assert sweep.pick({1e-3: [2.9], 3e-3: [2.8], 1e-2: [2.7]}) == (1e-2, "high")
    assert sweep.pick({1e-3: [2.7], 3e-3: [2.8]}) == (1e-3, "low")
    # the mean over seeds decides: 3e-3 has the best single run but the worse mean
    assert sweep.pick({1e-3: [2.80, 2.80], 3e-3: [2.70, 2.95], 1e-2: [2.9, 2.9]}) == (1e-3, "low")
    assert sweep.pick({1e-3: [2.9], 3e-3: [math.inf], 1e-2: [2.95]}) == (1e-3, "low")  # a diverged point loses
    assert sweep.extend([1e-3, 3e-3, 1e-2], "high") == pytest.approx(1e-2 * 10 / 3)
    assert sweep.extend([1e-3, 3e-3, 1e-2], "low") == pytest.approx(1e-3 / 3)
    with pytest.raises(ValueError):
        sweep.extend([1e-3], "low")
    # the new LR is rounded for the command line: 0.008 * 0.008 / 0.02 is 0.0031999999999999997 in floats
    assert 0.008 * 0.008 / 0.02 != 0.0032
    assert sweep.extend([0.008, 0.02, 0.05, 0.1], "low") == 0.0032
    assert sweep.final_loss({"status": "ok", "final_val_loss": 2.8}) == 2.8
    assert sweep.final_loss({"status": "diverged", "final_val_loss": 2.8}) == math.inf
    assert sweep.final_loss(None) == math.inf


def fake_runner(calls: list, loss_of_lr, fail_lrs=(), tokens_of_seed=lambda seed: 1_000_000):
    """Stands in for harness.run_logged: writes the record train.py would write, with a loss set by the LR (and
    the tokens trained in the clock set by the seed)."""
    def run_logged(cmd, log_path, log=print):
        args = [str(c) for c in cmd]
        lr, seed = float(args[args.index("--lr") + 1]), int(args[args.index("--seed") + 1])
        stem = args[args.index("--log_name") + 1]
        out = Path(args[args.index("--log_dir") + 1])
        hours = float(args[args.index("--max_train_time_hours") + 1])
        calls.append((stem, lr, seed, hours))
        status = "diverged" if lr in fail_lrs else "ok"
        (out / f"{stem}.json").write_text(json.dumps({
            "status": status, "final_val_loss": loss_of_lr(lr) + seed / 1000, "tokens": tokens_of_seed(seed),
            "config": {"lr": lr, "seed": seed, "max_train_time_hours": hours}}))
        return 0
    return run_logged


def test_sweep_extends_past_the_edge_then_runs_the_seeds_and_resumes(tmp_path, monkeypatch):
    # loss = 2.8 + ln(lr / 5e-3)²: grid {1e-3, 2e-3} -> best 2e-3 at the high edge -> 4e-3 (still the edge)
    # -> 8e-3: now 4e-3 (ln 0.8)² = 0.050 beats 8e-3 (ln 1.6)² = 0.221, an interior point after two extensions
    calls = []
    monkeypatch.setattr(sweep.harness, "run_logged", fake_runner(calls, lambda lr: 2.8 + math.log(lr / 5e-3) ** 2))
    argv = ["--out", str(tmp_path), "--lrs", "1e-3", "2e-3", "--screen_minutes", "6", "--screen_seeds", "1", "2",
            "--minutes", "12", "--seeds", "3", "4", "--", "--yaml_path", "x.yaml"]
    result = sweep.main(argv)
    assert [row["lr"] for row in result["screen"]] == pytest.approx([1e-3, 2e-3, 4e-3, 8e-3])
    assert result["best_lr"] == pytest.approx(4e-3) and result["at_edge"] is None
    screen_calls = [c for c in calls if c[0].startswith("screen")]
    assert len(screen_calls) == 8 and {c[2] for c in screen_calls} == {1, 2}
    assert all(c[3] == pytest.approx(0.1) for c in screen_calls)                    # 6 minutes of clock
    assert [(c[1], c[2], c[3]) for c in calls[8:]] == [(pytest.approx(4e-3), 3, pytest.approx(0.2)),
                                                      (pytest.approx(4e-3), 4, pytest.approx(0.2))]
    row = next(r for r in result["screen"] if r["lr"] == pytest.approx(4e-3))
    assert row["mean"] == pytest.approx(2.8 + math.log(0.8) ** 2 + 0.0015)  # seeds 1 and 2 add 1e-3 and 2e-3
    assert json.loads((tmp_path / "sweep.json").read_text())["best_lr"] == pytest.approx(4e-3)
    # a second call finds every record and reruns nothing
    calls.clear()
    assert sweep.main(argv)["best_lr"] == pytest.approx(4e-3) and calls == []
    # one seed per call (how recipes are interleaved): the seed runs accumulate, the screen is not rerun
    result = sweep.main(argv[:argv.index("--seeds") + 1] + ["5"] + argv[argv.index("--seeds") + 3:])
    assert [c[2] for c in calls] == [5] and [r["seed"] for r in result["final"]] == [3, 4, 5]
    assert [r["path"] for r in result["final"]] == ["final_s3.json", "final_s4.json", "final_s5.json"]
    # a seed run at another LR or clock is refused, not mixed in
    (tmp_path / "final_s9.json").write_text(json.dumps({"status": "ok", "final_val_loss": 2.9,
                                                        "config": {"lr": 1e-3, "seed": 9, "max_train_time_hours": 0.2}}))
    with pytest.raises(SystemExit, match="final_s9.json ran at lr 0.001"):
        sweep.main(argv)


def test_a_screen_is_finished_on_its_kind_of_cpu_and_its_seeds_run_anywhere(tmp_path, monkeypatch):
    """Final losses at a fixed clock depend on the CPU's speed: a screen cut short on one kind of CPU is not finished
    on another. A finished screen is kept as it is, and a new block's seed run at its chosen LR may run anywhere."""
    calls = []
    monkeypatch.setattr(sweep.harness, "run_logged", fake_runner(calls, lambda lr: 2.8 + math.log(lr / 2e-3) ** 2))
    monkeypatch.setattr(sweep.provenance, "this_cpu_id", lambda: "AuthenticAMD family 26 model 2")
    argv = ["--out", str(tmp_path), "--lrs", "1e-3", "2e-3", "4e-3", "--screen_minutes", "6", "--minutes", "12",
            "--seeds", "3", "--", "--yaml_path", "x.yaml"]
    sweep.main(argv)
    for path in tmp_path.glob("screen_*.json"):  # the records train.py writes on this machine name its CPU
        record = json.loads(path.read_text())
        path.write_text(json.dumps(record | {"provenance": {"hardware": {"cpu_id": "AuthenticAMD family 26 model 2"}}}))
    # another machine: the finished screen is kept, and the new seed runs there
    monkeypatch.setattr(sweep.provenance, "this_cpu_id", lambda: "AuthenticAMD family 25 model 1")
    calls.clear()
    result = sweep.main(argv[:argv.index("--seeds") + 1] + ["4"] + argv[argv.index("--seeds") + 2:])
    assert [c[0] for c in calls] == ["final_s4"] and [r["seed"] for r in result["final"]] == [3, 4]
    # a screen cut short (one run missing) is refused there, naming the kept run from the other CPU
    (tmp_path / "screen_lr0.004_s1.json").unlink()
    calls.clear()
    with pytest.raises(SystemExit, match="screen_lr0.001_s1.json ran on CPU AuthenticAMD family 26 model 2, this "
                                         "machine is AuthenticAMD family 25 model 1"):
        sweep.main(argv)
    assert calls == []
    # back on the screen's kind of CPU it is finished, the other runs kept
    monkeypatch.setattr(sweep.provenance, "this_cpu_id", lambda: "AuthenticAMD family 26 model 2")
    assert sweep.main(argv)["best_lr"] == pytest.approx(2e-3) and [c[0] for c in calls] == ["screen_lr0.004_s1"]


def test_a_diverged_lr_is_not_chosen_and_the_edge_is_reported(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(sweep.harness, "run_logged", fake_runner(calls, lambda lr: 3.0 - lr, fail_lrs=(3e-3,)))
    result = sweep.main(["--out", str(tmp_path), "--lrs", "1e-3", "3e-3", "--screen_minutes", "1",
                         "--max_extensions", "0", "--minutes", "1", "--seeds", "1"])
    assert result["best_lr"] == 1e-3 and result["at_edge"] == "low"
    assert "still at the low edge" in sweep.report(result)
    assert "machine's speed varied" not in sweep.report(result)  # every run trained 1M tokens


def test_the_screen_table_shows_the_tokens_each_run_trained(tmp_path, monkeypatch):
    """On a VM whose host slows down, runs of the same clock train different token counts: the table lists them
    and says how much the machine's speed varied (seed 2's runs here got 30% more tokens than seed 1's)."""
    calls = []
    def tokens_of_seed(seed):
        return 1_000_000 + 300_000 * (seed - 1)
    monkeypatch.setattr(sweep.harness, "run_logged",
                        fake_runner(calls, lambda lr: 3.0 - lr, tokens_of_seed=tokens_of_seed))
    result = sweep.main(["--out", str(tmp_path), "--lrs", "1e-3", "3e-3", "1e-2", "--screen_minutes", "1",
                         "--screen_seeds", "1", "2", "--max_extensions", "0", "--minutes", "1", "--seeds", "1"])
    assert [row["tokens"] for row in result["screen"]] == [[1_000_000, 1_300_000]] * 3
    text = sweep.report(result)
    assert "| 0.01 **(chosen)** | 2.9910, 2.9920 | 2.9915 | 1.00, 1.30 |" in text
    assert "trained 1.00M–1.30M tokens in the same clock: the machine's speed varied by 30%" in text


@pytest.mark.parametrize("extra, flag", [(["--seed", "3"], "--seed"), (["--lr=1e-3"], "--lr"),
                                         (["--log_dir", "x"], "--log_dir")])
def test_flags_the_sweep_sets_are_refused_after_the_separator(tmp_path, extra, flag, capsys):
    with pytest.raises(SystemExit):
        sweep.main(["--out", str(tmp_path), "--lrs", "1e-3", "3e-3", "--screen_minutes", "1", "--minutes", "1",
                    "--seeds", "1", "--", *extra])
    assert f"{flag} after '--'" in capsys.readouterr().err


def test_a_real_tiny_sweep_through_train_py(tmp_path):
    """The command the sweep builds is one train.py accepts, and its records land where the sweep reads them."""
    result = sweep.main(["--out", str(tmp_path), "--lr_key", "lr_hidden", "--lrs", "0.02", "0.05",
                         "--screen_minutes", "0.01", "--max_extensions", "0", "--minutes", "0.01", "--seeds", "1",
                         "--", "--data_dir", str(ROOT / "data" / "demo"), "--data_name", "demo",
                         "--hidden_size", "32", "--num_attention_heads", "2", "--num_hidden_layers", "2",
                         "--value_embeddings", "1", "--batch_size", "2048", "--row_length", "512",
                         "--max_length", "512", "--num_workers", "0", "--num_steps", "4", "--eval_every", "2",
                         "--controls", "false"])
    for stem in ("screen_lr0.02_s1", "screen_lr0.05_s1", "final_s1"):
        record = json.loads((tmp_path / f"{stem}.json").read_text())
        assert record["status"] == "ok" and record["config"]["seed"] == 1
    assert json.loads((tmp_path / "screen_lr0.02_s1.json").read_text())["config"]["lr_hidden"] == 0.02
    assert result["best_lr"] in (0.02, 0.05) and len(result["final"]) == 1


def test_a_real_tiny_sweep_through_the_hf_reference(tmp_path):
    """The same for hf_reference.py: its flags, its record, and controls that compare_runs.py accepts."""
    pytest.importorskip("transformers")
    result = sweep.main(["--program", "hf_reference", "--out", str(tmp_path), "--lrs", "1e-3", "3e-3",
                         "--screen_minutes", "0.01", "--max_extensions", "0", "--minutes", "0.01", "--seeds", "2",
                         "--", "--data_dir", str(ROOT / "data" / "demo"), "--data_name", "demo", "--hidden_size", "16",
                         "--num_hidden_layers", "1", "--num_attention_heads", "2", "--batch_sequences", "4",
                         "--max_length", "128", "--eval_every_s", "0.3"])
    final = json.loads((tmp_path / "final_s2.json").read_text())
    assert final["status"] == "ok" and final["config"]["seed"] == 2 and final["config"]["lr"] == result["best_lr"]
    assert final["controls"]["masked_tokens"] > 0 and final["loader"]["masked_tokens"] > 0
    import compare_runs
    compare_runs.compare({"hf": compare_runs.load_group([str(tmp_path / "final_s2.json")])}, [0.0])
