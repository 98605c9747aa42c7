"""benchmarks/ablation_blocks.py: what a block runs and in which order, resuming, the refusals, and the report's
ratios against an independent computation (numpy/scipy on synthetic curves whose times are known exactly), then one
real tiny block through train.py."""
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import ablation_blocks  # noqa: E402

CONTROLS = {"unigram": 2.9, "composition": 2.85, "ngram": 2.87, "ngram+composition": 2.84, "best": 2.84,
            "best_name": "ngram+composition", "masked_tokens": 1000}
RECIPE_ARGS = ["--data_dir", "data/demo", "--data_name", "demo", "--hidden_size", "32", "--num_attention_heads", "2",
               "--num_hidden_layers", "2", "--value_embeddings", "1"]
SLOPE = 0.002  # the recipe's validation loss: 2.9 - SLOPE·t / recipe_pace(block)


def recipe_pace(block: int) -> float:
    return 1 + 0.01 * block


def fake_runner(calls: list, ratio_of, tokens_per_s_of=lambda vid: 2000.0, status_of=lambda vid, block: "ok",
                cpu="AuthenticAMD family 26 model 2"):
    """Stands in for harness.run_logged: the record train.py would write for the command, its config parsed by
    train.py itself, its loss falling ratio_of(vid, block) times slower than the recipe's, validated every 10 s (the
    recipe itself 1% slower in each next block: seeds differ)."""
    import train

    def run_logged(cmd, log_path, log=print):
        args = [str(c) for c in cmd][2:]  # after the interpreter and train.py
        stem = args[args.index("--log_name") + 1]
        vid, block = stem.rsplit("_s", 1)
        calls.append(stem)
        slope, rate = SLOPE / (ratio_of(vid, int(block)) * recipe_pace(int(block))), tokens_per_s_of(vid)
        val = [{"step": k, "train_time_s": t, "tokens": rate * t, "loss": 2.9 - slope * t}
               for k, t in enumerate(np.arange(0.0, 100.0 + 1e-9, 10.0))]
        record = {"status": status_of(vid, int(block)), "val": val, "controls": CONTROLS, "steps": 10,
                  "tokens": rate * 100, "n_params": 1234, "world_size": 1, "tokens_per_s": rate,
                  "final_val_loss": val[-1]["loss"], "config": train.parse_config(args)[0].flat(),
                  "provenance": {"hardware": {"cpu_id": cpu}}}
        (Path(args[args.index("--log_dir") + 1]) / f"{stem}.json").write_text(json.dumps(record))
        return 0
    return run_logged


MASK15_RATIOS = {1: 1.4, 2: 1.5, 3: 1.65}  # the variant needs this factor more clock than the recipe, per block
NO_UNET_RATIOS = {1: 1.0, 2: 1.05, 3: 0.95}


def ratio_of(vid, block):
    return {"recipe": 1.0, "mask15": MASK15_RATIOS[block], "no_unet": NO_UNET_RATIOS[block], "cosine": 1.1 + 0.02 * block}[vid]


def block_argv(tmp_path, block, *only):
    return ["--out", str(tmp_path), "--block", str(block), "--minutes", "6", "--only", *(only or
            ("no_unet", "mask15", "cosine")), "--", *RECIPE_ARGS]


@pytest.fixture
def machine(monkeypatch):
    monkeypatch.setattr(ablation_blocks.provenance, "this_cpu_id", lambda: "AuthenticAMD family 26 model 2")


def test_blocks_run_each_variant_once_in_rotated_order_resume_and_report(tmp_path, monkeypatch, machine):
    calls = []
    monkeypatch.setattr(ablation_blocks.harness, "run_logged", fake_runner(
        calls, ratio_of, tokens_per_s_of=lambda vid: 1800.0 if vid == "mask15" else 2000.0,
        status_of=lambda vid, block: "nan" if (vid, block) == ("cosine", 2) else "ok"))
    for block in (1, 2, 3):
        ablation_blocks.main(block_argv(tmp_path, block))
    # the order rotates with the block: no run is always the session's last
    assert calls[:4] == ["recipe_s1", "no_unet_s1", "mask15_s1", "cosine_s1"]
    assert calls[4:8] == ["no_unet_s2", "mask15_s2", "cosine_s2", "recipe_s2"]
    assert calls[8:] == ["mask15_s3", "cosine_s3", "recipe_s3", "no_unet_s3"]
    for stem in calls:  # each run: its block's seed, the clock, and exactly its variant's key changed
        config = json.loads((tmp_path / f"{stem}.json").read_text())["config"]
        vid, block = stem.rsplit("_s", 1)
        assert config["seed"] == int(block) and config["max_train_time_hours"] == pytest.approx(0.1)
        assert config["unet"] is (vid != "no_unet") and config["mask_rate"] == (0.15 if vid == "mask15" else 0.2)
        assert config["scheduler_type"] == ("cosine" if vid == "cosine" else "trapezoid")
    # every run is kept, the diverged one too (a result, not a crash): nothing reruns
    calls.clear()
    result = ablation_blocks.main(block_argv(tmp_path, 2))
    assert calls == []

    # mask15: per block, the time to every target is exactly MASK15_RATIOS times the recipe's (linear curves)
    mask = result["variants"]["mask15"]
    assert mask["blocks"] == [1, 2, 3]
    logs = np.log([MASK15_RATIOS[b] for b in (1, 2, 3)])
    half = stats.t.ppf(0.975, 2) * logs.std(ddof=1) / math.sqrt(3)
    for cell in mask["time"]:
        ratio = cell["ratio"]
        assert ratio["ratios"] == pytest.approx([1.4, 1.5, 1.65])
        assert ratio["geometric_mean"] == pytest.approx(math.exp(logs.mean()))
        assert ratio["interval"] == pytest.approx((math.exp(logs.mean() - half), math.exp(logs.mean() + half)))
    # per token, the variant's 10% lower throughput makes it 0.9x the clock ratio
    assert mask["tokens"][0]["ratio"]["ratios"] == pytest.approx([0.9 * r for r in (1.4, 1.5, 1.65)])
    assert mask["tokens_per_s_ratio"] == pytest.approx(0.9)
    # finals: loss(100 s) = 2.9 - 100·SLOPE/(ratio·pace); the difference and the paired t-test
    recipe_final = [2.9 - 100 * SLOPE / recipe_pace(b) for b in (1, 2, 3)]
    variant_final = [2.9 - 100 * SLOPE / (MASK15_RATIOS[b] * recipe_pace(b)) for b in (1, 2, 3)]
    assert mask["final"]["differences"] == pytest.approx(np.subtract(variant_final, recipe_final))
    assert mask["final"]["p"] == pytest.approx(stats.ttest_rel(variant_final, recipe_final).pvalue)
    # the diverged cosine run of block 2 is named, and cosine compared over blocks 1 and 3
    assert result["variants"]["cosine"]["blocks"] == [1, 3]
    assert any("cosine_s2.json: status 'nan'" in line for line in result["failed"])
    text = (tmp_path / "ablations.md").read_text()
    assert "| mask rate 0.15 (`mask15`) | 3 |" in text and "1.51× [" in text and "not compared:" in text
    assert json.loads((tmp_path / "ablations.json").read_text())["blocks"] == [1, 2, 3]
    assert (tmp_path / "gain_curves.png").stat().st_size > 0
    assert ablation_blocks.main(["--out", str(tmp_path), "--report"])["variants"].keys() == {"no_unet", "mask15",
                                                                                             "cosine"}


def test_the_report_names_each_blocks_cpu(tmp_path, monkeypatch):
    """Blocks may run on different kinds of CPU (ratios within a block still compare): the report says which."""
    for block, cpu in ((1, "AuthenticAMD family 26 model 2"), (2, "GenuineIntel family 6 model 207")):
        monkeypatch.setattr(ablation_blocks.provenance, "this_cpu_id", lambda cpu=cpu: cpu)
        monkeypatch.setattr(ablation_blocks.harness, "run_logged", fake_runner([], ratio_of, cpu=cpu))
        ablation_blocks.main(block_argv(tmp_path, block, "no_unet"))
    result = ablation_blocks.main(["--out", str(tmp_path), "--report"])
    assert result["cpu_of_block"] == {1: "AuthenticAMD family 26 model 2", 2: "GenuineIntel family 6 model 207"}
    assert ("CPU of each block: 1: AuthenticAMD family 26 model 2; 2: GenuineIntel family 6 model 207"
            in (tmp_path / "ablations.md").read_text())


def test_a_target_some_blocks_miss_gets_counts_not_a_ratio(tmp_path, monkeypatch, machine):
    """A variant 3x slower reaches 0.01 below the control (2.83) in 100 s in no block (2.9 - 0.002/3·100 = 2.833)."""
    monkeypatch.setattr(ablation_blocks.harness, "run_logged",
                        fake_runner([], lambda vid, block: 2.9 + 0.1 * block if vid == "no_softcap" else 1.0))
    for block in (1, 2):
        ablation_blocks.main(["--out", str(tmp_path), "--block", str(block), "--minutes", "6", "--only",
                              "no_softcap", "--", *RECIPE_ARGS])
    result = ablation_blocks.main(["--out", str(tmp_path), "--report", "--ladder", "0,0.01"])
    at_control, deeper = result["variants"]["no_softcap"]["time"]
    assert at_control["ratio"]["ratios"] == pytest.approx([3.0, 3.1])
    assert "ratio" not in deeper and deeper["reached"] == {"recipe": 2, "no_softcap": 0}
    assert "2/2 → 0/2 reached" in result["text"]


def test_kept_runs_from_another_cpu_or_config_are_refused(tmp_path, monkeypatch, machine):
    calls = []
    monkeypatch.setattr(ablation_blocks.harness, "run_logged",
                        fake_runner(calls, ratio_of, cpu="AuthenticAMD family 25 model 1"))
    ablation_blocks.main(block_argv(tmp_path, 1, "no_unet"))
    (tmp_path / "no_unet_s1.json").unlink()  # the block is cut short, then resumed on another kind of CPU
    calls.clear()
    with pytest.raises(SystemExit, match="recipe_s1.json ran on CPU AuthenticAMD family 25 model 1, this machine "
                                         "is AuthenticAMD family 26 model 2"):
        ablation_blocks.main(block_argv(tmp_path, 1, "no_unet"))
    assert calls == []
    with pytest.raises(SystemExit, match=r"recipe_s1.json ran with another config \(hidden_size: 32, not 48\)"):
        ablation_blocks.main(block_argv(tmp_path, 1, "no_unet")[:-len(RECIPE_ARGS)]
                             + [a if a != "32" else "48" for a in RECIPE_ARGS])


def test_the_report_refuses_blocks_of_different_recipes(tmp_path, monkeypatch, machine):
    monkeypatch.setattr(ablation_blocks.harness, "run_logged", fake_runner([], ratio_of))
    ablation_blocks.main(block_argv(tmp_path, 1, "no_unet"))
    with pytest.raises(SystemExit, match="block 2's recipe differs from block 1's in lr_hidden"):
        ablation_blocks.main(block_argv(tmp_path, 2, "no_unet") + ["--lr_hidden", "0.01"])


ESM2 = ["--yaml_path", str(ROOT / "example_yamls" / "cpu_track_esm2.yaml")]


@pytest.mark.parametrize("recipe, only, message", [
    (RECIPE_ARGS + ["--seed", "3"], None, "--seed after '--': the block sets it"),
    (RECIPE_ARGS + ["--max_train_time_hours=1"], None, "--max_train_time_hours after '--'"),
    (RECIPE_ARGS + ["--unet", "false"], None, "--unet after '--': the variant no_unet sets it"),
    (RECIPE_ARGS + ["--scheduler_type", "constant"], ["cosine"], "--scheduler_type after '--': the variant cosine"),
    # the ESM2 recipe has no UNet to switch off
    (ESM2, ["no_unet"], r"the variant no_unet \(no UNet skips\) changes nothing: the recipe already has unet False"),
    (RECIPE_ARGS + ["--hidden_sise", "32"], ["no_unet"], "the recipe: .*hidden_sise"),
    (RECIPE_ARGS, ["no_such"], "--only no_such: not a variant"),
])
def test_what_would_make_a_block_lie_is_refused(tmp_path, recipe, only, message):
    argv = ["--out", str(tmp_path), "--block", "1", "--minutes", "1", *(["--only", *only] if only else []), "--",
            *recipe]
    with pytest.raises(SystemExit, match=message):
        ablation_blocks.main(argv)
    assert not list(tmp_path.glob("*.json"))  # refused before anything ran


def test_a_variant_train_py_refuses_is_refused_before_any_run(tmp_path, monkeypatch):
    monkeypatch.setitem(ablation_blocks.ablations.ONE_KNOB, "mask150", ("mask rate 1.5", dict(mask_rate=1.5)))
    with pytest.raises(SystemExit, match=r"the variant mask150 \(mask rate 1.5\): .*mask_rate"):
        ablation_blocks.main(["--out", str(tmp_path), "--block", "1", "--minutes", "1", "--only", "mask150", "--",
                              *RECIPE_ARGS])
    assert not list(tmp_path.glob("*.json"))


def test_a_variant_that_changes_nothing_is_refused(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("mask_rate: 0.15\n")  # the recipe already masks 15%: 'mask15' would be the recipe again
    with pytest.raises(SystemExit, match=r"the variant mask15 \(mask rate 0.15\) changes nothing: the recipe already "
                                         r"has mask_rate 0.15"):
        ablation_blocks.main(["--out", str(tmp_path), "--block", "1", "--minutes", "1", "--only", "mask15",
                              "--", "--yaml_path", str(recipe)])


def test_arguments_that_do_not_apply_are_refused(tmp_path, capsys):
    for argv in (["--out", str(tmp_path)], ["--out", str(tmp_path), "--block", "1"],
                 ["--out", str(tmp_path), "--report", "--block", "1"],
                 ["--out", str(tmp_path), "--report", "--", "--lr_hidden", "0.01"],
                 ["--out", str(tmp_path), "--report", "--ladder", "0,-0.01"]):
        with pytest.raises(SystemExit):
            ablation_blocks.main(argv)
    with pytest.raises(SystemExit, match="no runs in"):
        ablation_blocks.main(["--out", str(tmp_path), "--report"])


def test_a_real_tiny_block_through_train_py(tmp_path):
    """The commands the block builds are ones train.py accepts, with controls the report can read."""
    result = ablation_blocks.main([
        "--out", str(tmp_path), "--block", "1", "--minutes", "0.01", "--only", "no_softcap", "--ladder", "0",
        "--", "--data_dir", str(ROOT / "data" / "demo"), "--data_name", "demo", "--hidden_size", "32",
        "--num_attention_heads", "2", "--num_hidden_layers", "2", "--value_embeddings", "1", "--batch_size", "2048",
        "--row_length", "512", "--max_length", "512", "--num_workers", "0", "--num_steps", "4", "--eval_every", "2",
        "--controls_max_train_tokens", "20000"])
    for stem in ("recipe_s1", "no_softcap_s1"):
        record = json.loads((tmp_path / f"{stem}.json").read_text())
        assert record["status"] == "ok" and record["config"]["seed"] == 1
    assert json.loads((tmp_path / "no_softcap_s1.json").read_text())["config"]["soft_logit_cap"] == 0.0
    assert result["variants"]["no_softcap"]["blocks"] == [1]
