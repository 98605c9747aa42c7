"""train.py end to end on CPU with a tiny model (hidden 32, 2 layers) on tiny shards cut from real sequences.

Each numerical claim is checked against an independent reference run: 2 gloo processes against 1 process with
2 accumulation steps, a resumed run against the uninterrupted one, a run with an (undone) warm-up against one
without. The rest checks the contract of the run record and of failures: strict config, secrets, signals, NaN.
"""
import json
import os
import re
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import torch
import yaml

import checkpoint
import train
from conftest import demo_proteins
from shards import read_header, write_shard
from vocab import encode_with_specials

ROOT = Path(__file__).resolve().parent.parent
TOKENS = {"HF_TOKEN": "hf_FAKEsecretTOKEN0123456789", "WANDB_API_KEY": "FAKEwandbKEY0123456789abcdef"}


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """train/valid/test shards of real Swiss-Prot sequences (30..200 residues): 400 / 24 / 16 sequences."""
    sequences = demo_proteins(440)
    out = tmp_path_factory.mktemp("tiny_data")
    for split, part in (("train", sequences[:400]), ("valid", sequences[400:424]), ("test", sequences[424:])):
        write_shard(out / f"tiny_{split}_000000.bin", torch.cat([torch.from_numpy(encode_with_specials(s))
                                                                 for s in part]).numpy())
    return out


def tiny_args(data: Path, tmp: Path, name: str, **overrides) -> list[str]:
    """A tiny run: 8 rows of 256 tokens per step, evaluated every 2 steps, logged every step."""
    values = dict(data_dir=data, data_name="tiny", log_dir=tmp / "logs", save_dir=tmp / "ckpt", log_name=name,
                  hidden_size=32, num_attention_heads=2, num_hidden_layers=2, value_embeddings=1,
                  batch_size=2048, row_length=256, max_length=256, grad_accum=1, num_workers=0, num_steps=4,
                  eval_every=2, log_every=1, untimed_warmup_steps=0, lr_warmup_steps=0,
                  muon_momentum_warmup_steps=2, mask_rate=0.3)
    values.update(overrides)
    return [arg for key, value in values.items() for arg in (f"--{key}", str(value))]


def losses(summary: dict) -> dict[int, float]:
    """Training loss per logged step."""
    return {e["step"]: e["loss"] for e in summary["train"]}


def val_losses(summary: dict) -> dict[int, float]:
    """Validation loss per evaluated step."""
    return {e["step"]: e["loss"] for e in summary["val"]}


# ---- Configuration ------------------------------------------------------------------------------------------------

def test_yaml_then_cli_with_typed_values(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("unet: false\nlr_hidden: 0.02\nadam_betas: [0.9, 0.95]\nmask_rate: 0.3\n"
                    "num_steps: 50\nlr: 1e-3\n")
    cfg, given = train.parse_config(["--yaml_path", str(path), "--lr_hidden=0.03", "--tie_embeddings", "true",
                                     "--num_steps", "2e3", "--max_train_time_hours", "none", "--wandb=false"])
    assert cfg.model.unet is False and cfg.model.tie_embeddings is True and cfg.run.wandb is False
    assert cfg.optim.lr_hidden == 0.03 and cfg.optim.lr == 1e-3 and cfg.optim.adam_betas == (0.9, 0.95)
    assert cfg.run.num_steps == 2000 and isinstance(cfg.run.num_steps, int) and cfg.data.mask_rate == 0.3
    assert cfg.run.max_train_time_hours is None
    assert given == {"unet", "lr_hidden", "adam_betas", "mask_rate", "num_steps", "lr", "tie_embeddings",
                     "max_train_time_hours", "wandb"}
    assert train.parse_config(["--yaml_path", str(path), "--unet", "true"])[0].model.unet is True
    assert train.parse_config(["--unet=false"])[0].model.unet is False
    assert train.parse_config(["--adam_betas", "0.7,0.9"])[0].optim.adam_betas == (0.7, 0.9)
    assert train.parse_config(["--stop_at_target"])[0].run.stop_at_target is True  # a bare bool key means true


def test_each_component_gets_its_own_config():
    """Every key belongs to exactly one component's dataclass, and the flat view has every key once."""
    cfg = train.parse_config(["--hidden_size", "64", "--num_attention_heads", "2", "--grad_accum", "2",
                              "--lr_head", "0.01", "--seed", "3"])[0]
    assert (cfg.model.hidden_size, cfg.data.grad_accum, cfg.optim.lr_head, cfg.run.seed) == (64, 2, 0.01, 3)
    table = train.config.key_table(train.SECTIONS)
    assert set(cfg.flat()) == set(table)
    assert {section for section, _ in table.values()} == {"model", "data", "optim", "run"}


@pytest.mark.parametrize("key, hint", [("use_muon", "recipe"), ("cooldown_steps", "cooldown_frac"),
                                       ("bugfix", "debug.yaml"), ("lr_value_embed", "lr_embed"),
                                       ("sliding_window", "removed"), ("mask_rate_start", "mask_rate")])
def test_removed_keys_say_what_to_use_instead(key, hint, tmp_path):
    with pytest.raises(train.ConfigError, match=f"'{key}' is no longer a config key: .*{hint}"):
        train.parse_config([f"--{key}", "1"])
    path = tmp_path / "old.yaml"
    path.write_text(f"{key}: 1\n")
    with pytest.raises(train.ConfigError, match=f"old.yaml: '{key}' is no longer a config key"):
        train.parse_config(["--yaml_path", str(path)])


@pytest.mark.parametrize("argv, key, hint", [
    (["--num_step", "5"], "num_step", "num_steps"),
    (["--lr-hiden", "0.1"], "lr_hiden", "lr_hidden"),
    (["--totally_unknown", "1"], "totally_unknown", None),
])
def test_unknown_cli_key_is_named(argv, key, hint):
    with pytest.raises(train.ConfigError) as err:
        train.parse_config(argv)
    assert f"'{key}'" in str(err.value)
    if hint:
        assert f"did you mean '{hint}'" in str(err.value)


def test_unknown_yaml_key_is_named(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("hidden_size: 64\nauto_grad_clip_percentile: 10\n")
    with pytest.raises(train.ConfigError, match=r"bad.yaml: unknown config key 'auto_grad_clip_percentile'"):
        train.parse_config(["--yaml_path", str(path)])


@pytest.mark.parametrize("argv, variable", [
    (["--hf_token", "hf_x"], "HF_TOKEN"), (["--token=hf_x"], "HF_TOKEN"),
    (["--wandb_token", "abc"], "WANDB_API_KEY"), (["--wandb_api_key", "abc"], "WANDB_API_KEY"),
])
def test_tokens_on_the_command_line_are_refused(argv, variable):
    with pytest.raises(train.ConfigError, match=f"environment variable {variable}"):
        train.parse_config(argv)


def test_token_in_yaml_is_refused(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text("token: hf_abc\n")
    with pytest.raises(train.ConfigError, match="HF_TOKEN"):
        train.parse_config(["--yaml_path", str(path)])


@pytest.mark.parametrize("argv, key", [
    (["--num_steps", "ten"], "num_steps"), (["--unet", "maybe"], "unet"), (["--lr", "fast"], "lr"),
    (["--batch_size", "1000"], "batch_size"), (["--hidden_size", "30", "--num_attention_heads", "4"], "hidden_size"),
    (["--push_to_hub", "true"], "push_to_hub"), (["--mask_rate", "1.5"], "mask_rate"),
    (["--architecture", "esm2"], "architecture"), (["--scheduler_type", "cosinus"], "scheduler_type"),
    (["--max_length", "4096", "--row_length", "1024", "--batch_size", "8192"], "max_length"),
    (["--mlm", "false", "--bert_corruption", "true"], "bert_corruption"),
    (["--yaml_path", "no/such/file.yaml"], "yaml_path"),
])
def test_wrong_values_and_combinations_are_named(argv, key):
    with pytest.raises(train.ConfigError, match=key):
        train.parse_config(argv)


@pytest.mark.parametrize("argv, key, reason", [
    (["--recipe", "esm2", "--lr_hidden", "0.1"], "lr_hidden", "with recipe esm2"),
    (["--lr", "1e-3"], "lr", "with recipe speedrun"),
    (["--hidden_optimizer", "adamw", "--muon_momentum_warmup_steps", "10"], "muon_momentum_warmup_steps",
     "with hidden_optimizer adamw"),
    (["--lr_hidden_adamw", "1e-3"], "lr_hidden_adamw", "with hidden_optimizer muon"),
    (["--scheduler_type", "cosine", "--cooldown_frac", "0.2"], "cooldown_frac", "with scheduler_type cosine"),
    (["--scheduler_type", "constant", "--lr_floor", "0.2"], "lr_floor", "with scheduler_type constant"),
])
def test_a_key_without_effect_on_the_command_line_is_refused(argv, key, reason):
    with pytest.raises(train.ConfigError, match=rf"^--{key}: set on the command line, but it has no effect {reason}"):
        train.parse_config(argv)


def test_a_yaml_key_made_inert_by_the_command_line_is_a_logged_warning(tiny_data, tmp_path):
    """`--scheduler_type cosine` over a YAML with a trapezoid cooldown: an override, not a mistake, but said."""
    path = tmp_path / "trapezoid.yaml"
    path.write_text("cooldown_frac: 0.3\n")
    summary = train.main(["--yaml_path", str(path), *tiny_args(tiny_data, tmp_path, "inert", num_steps=2,
                                                               scheduler_type="cosine", controls=False)])
    assert summary["status"] == "ok"
    assert ("warning: cooldown_frac (set in the YAML) has no effect with scheduler_type cosine"
            in (tmp_path / "logs" / "inert.txt").read_text())
    # the same key with the trapezoid it belongs to: no warning
    train.main(["--yaml_path", str(path), *tiny_args(tiny_data, tmp_path, "used", num_steps=2, controls=False)])
    assert "warning: cooldown_frac" not in (tmp_path / "logs" / "used.txt").read_text()  # (the log holds the code)


def test_config_error_stops_before_any_work(tmp_path):
    """Through the command line: one clear message naming the key, a non-zero exit, and nothing written."""
    proc = subprocess.run([sys.executable, "train.py", "--lr_hiden", "0.1", "--log_dir", str(tmp_path / "logs")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == ["train.py: command line: unknown config key 'lr_hiden' "
                                                "(did you mean 'lr_hidden'?)"]
    assert not (tmp_path / "logs").exists()


def test_missing_data_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere_train_"):
        train.main(["--data_dir", str(tmp_path), "--data_name", "nowhere", "--log_dir", str(tmp_path / "logs")])
    assert not (tmp_path / "logs").exists()


def test_corrupt_shard_is_named_before_any_work(tiny_data, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for split in ("train", "valid"):
        (data / f"tiny_{split}_000000.bin").write_bytes((tiny_data / f"tiny_{split}_000000.bin").read_bytes())
    broken = data / "tiny_train_000000.bin"
    n_tokens = read_header(broken)
    broken.write_bytes(broken.read_bytes()[:-10])  # truncated: the header's token count no longer matches
    proc = subprocess.run([sys.executable, "train.py", *tiny_args(data, tmp_path, "corrupt")], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [f"train.py: {broken}: header says {n_tokens} tokens but the file "
                                                f"holds {n_tokens - 10} (truncated or corrupt)"]
    assert not (tmp_path / "logs").exists()


def test_every_config_key_is_read():
    """No dead flags: every field of a component's config is read (as `<object>.<field>`) by its component or by
    train.py (the field's own definition line does not count)."""
    import inspect
    train_source = (ROOT / "train.py").read_text()
    for cls in train.SECTIONS.values():
        owner = Path(inspect.getfile(cls)).read_text()
        for field in train.dataclasses.fields(cls):
            code = re.sub(rf"(?m)^\s+{field.name}: .*$", "", owner + train_source)
            assert re.search(rf"\.{field.name}\b", code), f"{cls.__name__}.{field.name} is never read"


def test_config_reference_in_docs_is_generated():
    """docs/TRAINING.md's key table is the one generated from the dataclasses (`python train.py --help`)."""
    doc = (ROOT / "docs" / "TRAINING.md").read_text()
    table = train.config.reference_table(train.SECTIONS)
    assert table in doc, "docs/TRAINING.md's config table is stale: paste the table `python train.py --help` prints"


# ---- Runs ---------------------------------------------------------------------------------------------------------

def test_git_state_is_taken_at_the_start(tiny_data, tmp_path, monkeypatch):
    """A commit or an edit while a run goes must not change the commit and dirty flag the run reports."""
    states = iter([{"commit": "a" * 40, "dirty": False}] + [{"commit": "b" * 40, "dirty": True}] * 100)
    monkeypatch.setattr(train.runlog, "git_state", lambda: next(states))
    summary = train.main(tiny_args(tiny_data, tmp_path, "git", num_steps=2, controls=False))
    assert summary["git"] == {"commit": "a" * 40, "dirty": False}
    assert f"git commit: {'a' * 40}\n" in (tmp_path / "logs" / "git.txt").read_text()


def test_run_record(tiny_data, tmp_path):
    summary = train.main(tiny_args(tiny_data, tmp_path, "rec", save_every=2))
    assert summary["status"] == "ok"
    written = json.loads((tmp_path / "logs" / "rec.json").read_text())
    assert written == json.loads(json.dumps(summary))
    for key in ("run_id", "config", "n_params", "world_size", "device", "steps", "tokens", "train_time_s",
                "tokens_per_s", "target_loss", "time_to_target_s", "val", "final_val_loss", "checkpoints", "status",
                "test", "loader", "git", "peak_memory_bytes"):
        assert key in written, key
    assert written["steps"] == 4 and written["world_size"] == 1 and written["device"] == "cpu"
    assert [v["step"] for v in written["val"]] == [0, 2, 4]
    assert set(written["val"][0]) >= {"step", "tokens", "train_time_s", "loss", "perplexity", "accuracy"}
    assert written["val"][0]["loss"] == pytest.approx(3.4965, abs=0.01)  # zero-initialised head: ln(33)
    assert written["final_val_loss"] == written["val"][-1]["loss"] < written["val"][0]["loss"]
    assert written["time_to_target_s"] is None and written["test"]["masked_tokens"] > 0
    # Tokens are real (non-padding) tokens: the loader's own count, and fewer than the padded rows hold.
    assert written["tokens"] == written["loader"]["real_tokens"] < 4 * 2048
    assert written["tokens_per_s"] == pytest.approx(written["tokens"] / written["train_time_s"])
    assert written["config"]["hidden_size"] == 32
    assert [Path(p).name for p in written["checkpoints"]] == ["step_000002", "step_000004"]

    text = (tmp_path / "logs" / "rec.txt").read_text()
    for name in train.CORE_FILES:
        assert (ROOT / name).read_text() in text, f"source of {name} missing from the log"
    resolved = text.split("==================== config (resolved) ====================\n")[1].split("\nrun id:")[0]
    assert yaml.safe_load(resolved) == json.loads(json.dumps(written["config"]))
    assert re.search(r"git commit: ([0-9a-f]{40}|unknown)", text) and "world size: 1" in text
    assert len(re.findall(r"^step:\s+\d+/4 loss:\d+\.\d{4} lr:\S+ tokens/s:\S+ mfu:n/a "
                          r"train_time:\S+s tokens:\d+ eta:\d+s$", text, re.M)) == 4
    assert len(re.findall(r"^step:\s+\d+/4 val_loss:\d+\.\d{4} val_ppl:\S+ val_acc:\S+ gain:[+-]\d+\.\d{4} train_time:\S+s", text,
                          re.M)) == 3
    assert (tmp_path / "logs" / "rec.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The final checkpoint loads for inference in one call.
    model = checkpoint.load_model(written["checkpoints"][-1])
    per_residue, pooled = model.embed(["MKTAYIAKQRQISFVKSHFSRQ", "MVLSPADKTNVKAAW"])
    assert [tuple(r.shape) for r in per_residue] == [(22, 32), (15, 32)] and tuple(pooled.shape) == (2, 32)


def test_untimed_warmup_is_undone(tiny_data, tmp_path):
    """Warm-up steps compile and are then undone: the run equals one without warm-up."""
    plain = train.main(tiny_args(tiny_data, tmp_path, "plain", num_steps=3, eval_every=3))
    warm = train.main(tiny_args(tiny_data, tmp_path, "warm", num_steps=3, eval_every=3, untimed_warmup_steps=2))
    assert losses(warm) == losses(plain) and val_losses(warm) == val_losses(plain)
    assert warm["tokens"] == plain["tokens"]


def test_resume_equals_uninterrupted(tiny_data, tmp_path):
    full = train.main(tiny_args(tiny_data, tmp_path, "full", num_steps=6, save_every=3, eval_every=3))
    mid = Path(full["checkpoints"][0])
    assert mid.name == "step_000003"
    resumed = train.main(tiny_args(tiny_data, tmp_path, "resumed", num_steps=6, save_every=3, eval_every=3,
                                   resume_from=mid))
    assert resumed["status"] == "ok" and resumed["resumed_from"] == str(mid)
    after = {s: l for s, l in losses(resumed).items() if s > 3}
    assert list(after) == [4, 5, 6]
    assert after == pytest.approx({s: l for s, l in losses(full).items() if s > 3}, rel=1e-6, abs=0)
    assert losses(resumed) == losses(full)  # steps <= 3 come from the checkpoint's history
    assert val_losses(resumed) == pytest.approx(val_losses(full), rel=1e-6, abs=0)
    assert resumed["tokens"] == full["tokens"] and resumed["steps"] == 6
    # A resumed config must match the checkpoint's, or the run refuses to start.
    with pytest.raises(train.ConfigError, match=r"lr_hidden"):
        train.main(tiny_args(tiny_data, tmp_path, "bad", num_steps=6, resume_from=mid, lr_hidden=0.01))


def _torchrun(args: list[str], nproc: int, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           f"--nproc_per_node={nproc}", "train.py", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)


def test_two_processes_equal_one_process_with_accumulation(tiny_data, tmp_path):
    """2 gloo ranks × 1 micro-step and 1 process × 2 micro-steps see the same global batch and normalise by the
    same global masked-token count, so losses and validation agree to float rounding."""
    proc = _torchrun(tiny_args(tiny_data, tmp_path, "ddp", grad_accum=1, save_every=4), nproc=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp = json.loads((tmp_path / "logs" / "ddp.json").read_text())
    single = train.main(tiny_args(tiny_data, tmp_path, "single", grad_accum=2))
    assert ddp["world_size"] == 2 and ddp["status"] == "ok"
    assert ddp["tokens"] == single["tokens"]
    assert [e["masked_tokens"] for e in ddp["val"]] == [e["masked_tokens"] for e in single["val"]]
    assert losses(ddp) == pytest.approx(losses(single), rel=1e-5)
    assert val_losses(ddp) == pytest.approx(val_losses(single), rel=1e-5)
    assert val_losses(ddp)[4] < val_losses(ddp)[0] - 0.05  # and it learned something
    model = checkpoint.load_model(ddp["checkpoints"][-1])
    assert model.num_parameters() == ddp["n_params"]


def test_sigterm_saves_a_loadable_checkpoint(tiny_data, tmp_path):
    log = tmp_path / "logs" / "term.txt"
    proc = subprocess.Popen([sys.executable, "train.py", *tiny_args(tiny_data, tmp_path, "term", num_steps=100000,
                                                                    eval_every=0)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not (log.is_file() and re.search(r"^step:\s+2/", log.read_text(), re.M)):
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            assert time.time() < deadline, "training never reached step 2"
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    finally:
        proc.kill()
    summary = json.loads((tmp_path / "logs" / "term.json").read_text())
    assert summary["status"] == "interrupted" and summary["signal"] == signal.SIGTERM
    assert 2 <= summary["steps"] < 100000
    last = Path(summary["checkpoints"][-1])
    assert last.name == f"step_{summary['steps']:06d}"
    assert checkpoint.load_model(last).num_parameters() == summary["n_params"]
    assert checkpoint.load_train_state(last)["step"] == summary["steps"]
    assert not list(last.parent.glob("*.tmp-*"))  # nothing half-written left behind


def test_nan_loss_stops_naming_step_and_checkpoint(tiny_data, tmp_path, monkeypatch):
    forward = train.PLM.forward
    calls = {"n": 0}

    def poisoned(self, *args):
        calls["n"] += 1
        loss_sum, count = forward(self, *args)
        return (loss_sum * float("nan") if calls["n"] >= 3 else loss_sum), count

    monkeypatch.setattr(train.PLM, "forward", poisoned)
    summary = train.main(tiny_args(tiny_data, tmp_path, "nan", num_steps=6, save_every=1, eval_every=0))
    assert summary["status"] == "nan" and summary["steps"] == 3
    assert "loss is nan at step 3" in summary["message"]
    assert summary["message"].endswith(str(tmp_path / "ckpt" / "nan" / "step_000002"))
    assert "STOPPED: loss is nan at step 3" in (tmp_path / "logs" / "nan.txt").read_text()


def test_stop_at_target_and_time_budget(tiny_data, tmp_path):
    hit = train.main(tiny_args(tiny_data, tmp_path, "hit", num_steps=50, target_loss=10.0, stop_at_target="true"))
    assert hit["status"] == "ok" and hit["steps"] == 0
    assert hit["time_to_target_s"] < 0.1 and hit["step_to_target"] == 0 and hit["tokens_to_target"] == 0
    budget = 3 / 3600  # three seconds of training
    timed = train.main(tiny_args(tiny_data, tmp_path, "timed", num_steps=100000, eval_every=0,
                                 max_train_time_hours=budget, scheduler_type="linear"))
    assert timed["status"] == "ok" and 2 <= timed["steps"] < 100000
    assert timed["train_time_s"] >= 3.0 and timed["val"][-1]["step"] == timed["steps"]
    # The schedule follows the clock: linear decay over the 3 s, so every later step has a lower LR.
    lrs = [e["lr"] for e in timed["train"]]
    assert lrs[0] == pytest.approx(0.05, rel=1e-3) and all(b < a for a, b in zip(lrs, lrs[1:]))
    # A budget the run never reaches: num_steps ends it, so the schedule follows the steps and still cools down
    # (it used to follow only the clock and stop at the peak LR).
    steps = train.main(tiny_args(tiny_data, tmp_path, "steps_first", num_steps=6, eval_every=0,
                                 max_train_time_hours=1.0, scheduler_type="linear", lr_floor=0.0))
    plain = train.main(tiny_args(tiny_data, tmp_path, "no_budget", num_steps=6, eval_every=0,
                                 scheduler_type="linear", lr_floor=0.0))
    assert [e["lr"] for e in steps["train"]] == pytest.approx([e["lr"] for e in plain["train"]])
    assert steps["train"][-1]["lr"] < 0.05 * 0.2


def test_validation_masks_do_not_depend_on_the_run_seed(tiny_data, tmp_path, monkeypatch):
    """Runs with different seeds are scored on the same masked positions (val_mask_seed), so they compare."""
    load, seeds = train.validation.load_validation_batches, []

    def spy(*args, **kwargs):
        seeds.append((args[2], kwargs["seed"]))
        return load(*args, **kwargs)

    monkeypatch.setattr(train.validation, "load_validation_batches", spy)
    a = train.main(tiny_args(tiny_data, tmp_path, "seed1", num_steps=0, seed=1))
    b = train.main(tiny_args(tiny_data, tmp_path, "seed2", num_steps=0, seed=2, val_mask_seed=7))
    assert seeds == [("valid", 0), ("test", 0), ("valid", 7), ("test", 7)]
    assert a["val"][0]["loss"] != b["val"][0]["loss"]


def _fake_module(name: str, **attributes) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attributes)
    return module


def test_secrets_never_written_and_failed_push_is_not_fatal(tiny_data, tmp_path, monkeypatch):
    """Tokens in the environment reach no file the run writes, even when an integration echoes them in an error;
    wandb runs offline without a key, and a failed Hub push leaves the run ok."""
    for name, value in TOKENS.items():
        monkeypatch.setenv(name, value)
    seen = {}

    class FakeWandbRun:
        summary = {}

        def log(self, values, step):
            seen.setdefault("logged", []).append(step)

        def finish(self):
            seen["finished"] = True

    def wandb_init(**kwargs):
        seen["init"] = kwargs
        return FakeWandbRun()

    class FailingApi:
        def __init__(self, token):
            self.token = token

        def create_repo(self, repo_id, exist_ok):
            pass

        def upload_folder(self, **kwargs):
            raise RuntimeError(f"401 Unauthorized for token {self.token}")

    monkeypatch.setitem(sys.modules, "wandb", _fake_module("wandb", init=wandb_init))
    import huggingface_hub  # the stand-in replaces HfApi only: the export also uses transformers, which needs the rest
    monkeypatch.setattr(huggingface_hub, "HfApi", FailingApi)
    summary = train.main(tiny_args(tiny_data, tmp_path, "secret", wandb="true", push_to_hub="true",
                                   hub_repo_id="someone/tiny", save_every=2))
    assert summary["status"] == "ok"
    assert seen["init"]["mode"] == "online" and seen["finished"] and seen["logged"]
    text = (tmp_path / "logs" / "secret.txt").read_text()
    assert "hub: push to someone/tiny failed (RuntimeError: 401 Unauthorized for token <redacted>)" in text
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) >= 8
    for path in files:
        data = path.read_bytes()
        for value in TOKENS.values():
            assert value.encode() not in data, f"{value} written to {path}"


def test_hub_push_and_offline_wandb(tiny_data, tmp_path, monkeypatch):
    """The push uploads export.py's folder (loads with transformers; tests/test_export.py proves parity), its model
    card read from the run's JSON summary."""
    monkeypatch.setenv("HF_TOKEN", TOKENS["HF_TOKEN"])
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    pushed, modes = {}, []

    class Api:
        def __init__(self, token):
            pushed["token_given"] = token == TOKENS["HF_TOKEN"]

        def create_repo(self, repo_id, exist_ok):
            pushed["repo"] = repo_id

        def upload_folder(self, folder_path, repo_id, commit_message):
            pushed["files"] = sorted(p.name for p in Path(folder_path).iterdir())
            pushed["card"] = (Path(folder_path) / "README.md").read_text()
            pushed["config"] = json.loads((Path(folder_path) / "config.json").read_text())

    def wandb_init(**kwargs):
        modes.append(kwargs["mode"])
        raise ConnectionError("no network")

    import huggingface_hub
    monkeypatch.setattr(huggingface_hub, "HfApi", Api)
    monkeypatch.setitem(sys.modules, "wandb", _fake_module("wandb", init=wandb_init))
    summary = train.main(tiny_args(tiny_data, tmp_path, "push", num_steps=2, wandb="true", push_to_hub="true",
                                   hub_repo_id="someone/tiny"))
    assert summary["status"] == "ok" and modes == ["offline"]
    assert pushed["token_given"] and pushed["repo"] == "someone/tiny"
    assert {"README.md", "config.json", "model.safetensors", "modeling_plm_speedrun.py", "model.py", "vocab.py",
            "vocab.txt", "tokenizer_config.json", "training_config.yaml", "training_run.json"} == set(pushed["files"])
    assert pushed["config"]["auto_map"]["AutoModelForMaskedLM"] == "modeling_plm_speedrun.PLMSpeedrunForMaskedLM"
    assert f"**{summary['final_val_loss']:.4f} nats**" in pushed["card"] and "trust_remote_code=True" in pushed["card"]
    text = (tmp_path / "logs" / "push.txt").read_text()
    assert "wandb: init failed (ConnectionError: no network); continuing without wandb" in text
    assert "hub: pushed" in text


def test_push_without_token_is_refused_before_work(tiny_data, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with pytest.raises(train.ConfigError, match="HF_TOKEN"):
        train.main(tiny_args(tiny_data, tmp_path, "x", push_to_hub="true", hub_repo_id="someone/tiny"))
    assert not (tmp_path / "logs").exists()


def test_atomic_checkpoint_replaces_and_leaves_no_temporaries(tmp_path):
    from model import PLM, ModelConfig
    model = PLM(ModelConfig(hidden_size=32, num_attention_heads=2, num_hidden_layers=2, value_embeddings=1))
    model.init_weights()
    target = tmp_path / "run" / "step_000001"
    checkpoint.save_checkpoint(target, model, {"step": 1})
    checkpoint.save_checkpoint(target, model, {"step": 2})
    assert checkpoint.load_train_state(target)["step"] == 2
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["step_000001"]
    with pytest.raises(FileNotFoundError, match="train_state.pt"):
        checkpoint.load_train_state(tmp_path)
