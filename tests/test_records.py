"""records.py and provenance.py: runs that prove themselves, the rules of each track, and the statistics.

Three real tiny train.py runs (width 32, 2 layers, 4 steps, seeds 1-3) on shards tokenized from real Swiss-Prot
sequences are shared by the module. Each refusal is provoked by one change to copies of them, made the way a
person would (an edited JSON, an edited log) or the way a careful forger would (JSON re-sealed, log edited to
match), and must name its rule and run. The statistics are checked against scipy.stats.
"""
import dataclasses
import hashlib
import json
import re
import shutil
import types
from pathlib import Path

import numpy as np
import pytest
import scipy.stats

import provenance
import records
import train
from data.tokenize_fasta import tokenize_fasta
from conftest import demo_proteins
from shards import sha256_file

ROOT = Path(__file__).resolve().parent.parent


# ---- Fixtures: tiny data with a manifest, three real runs ------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    """tiny_{train,valid}_000000.bin + tiny_manifest.json from 400 / 24 real sequences (30..200 residues)."""
    sequences = demo_proteins(424)
    tmp = tmp_path_factory.mktemp("fasta")
    for name, part in (("train", sequences[:400]), ("valid", sequences[400:])):
        (tmp / f"{name}.fasta").write_text("".join(f">s{i}\n{s}\n" for i, s in enumerate(part)))
    out = tmp_path_factory.mktemp("tiny_data")
    tokenize_fasta([tmp / "train.fasta"], out, "tiny", valid_inputs=[tmp / "valid.fasta"])
    return out


def run_args(data: Path, logs: Path, name: str, seed: int) -> list[str]:
    values = dict(data_dir=data, data_name="tiny", log_dir=logs, save_dir=logs / "ckpt", log_name=name, seed=seed,
                  hidden_size=32, num_attention_heads=2, num_hidden_layers=2, value_embeddings=1, batch_size=2048,
                  row_length=256, max_length=256, num_workers=0, num_steps=4, eval_every=2, log_every=1,
                  untimed_warmup_steps=0, muon_momentum_warmup_steps=2, target_loss=3.0)
    return [arg for key, value in values.items() for arg in (f"--{key}", str(value))]


@pytest.fixture(scope="module")
def runs(tiny_data, tmp_path_factory) -> list[Path]:
    """The JSON summaries of three real runs differing only in seed (and run id)."""
    logs = tmp_path_factory.mktemp("runs")
    paths = []
    for seed in (1, 2, 3):
        summary = train.main(run_args(tiny_data, logs, f"run{seed}", seed))
        assert summary["status"] == "ok"
        paths.append(logs / f"run{seed}.json")
    return paths


def tiny_track(runs, **overrides) -> records.Track:
    """A time track these runs satisfy: their data and validation, this machine, a target above their losses."""
    prov = records.load_run(runs[0]).prov
    final = [records.load_run(p).summary["final_val_loss"] for p in runs]
    values = dict(name="test", title="tiny test track", kind="time", hardware="this CPU", device="cpu",
                  world_size=1, gpu=None, max_usable_cpus=None, data="tests/test_records.py", data_name="tiny",
                  train_sha256=None, valid_sha256=tuple(prov["validation"]["shard_sha256"]),
                  val_mask_rate=prov["validation"]["mask_rate"], val_mask_seed=prov["validation"]["mask_seed"],
                  val_masked_tokens=prov["validation"]["masked_tokens"], max_params=1_000_000,
                  target_loss=round(max(final) + 0.2, 3))
    values.update(overrides)
    return records.Track(**values)


def copy_runs(paths: list[Path], dest: Path) -> list[Path]:
    dest.mkdir(parents=True, exist_ok=True)
    for path in paths:
        for suffix in (".json", ".txt", ".png"):
            if path.with_suffix(suffix).is_file():
                shutil.copyfile(path.with_suffix(suffix), dest / (path.stem + suffix))
    return [dest / p.name for p in paths]


def forge(json_path: Path, summary_edit=None, log_edit=None, reseal: bool = True) -> None:
    """Edit a run's JSON and/or log in place; reseal the JSON the way a careful forger would."""
    if summary_edit:
        summary = json.loads(json_path.read_text())
        summary_edit(summary)
        json_path.write_text(json.dumps(provenance.seal(summary) if reseal else summary, indent=1))
    if log_edit:
        log = json_path.with_suffix(".txt")
        log.write_text(log_edit(log.read_text()))


def refusals(track: records.Track, paths: list[Path], evals=None) -> list[records.Violation]:
    return records.check_runs(track, [records.load_run(p) for p in paths], evals)[0]


def rules_broken(violations) -> set[tuple[str, str]]:
    return {(v.rule, v.run) for v in violations}


# ---- What a run records ----------------------------------------------------------------------------------------

def test_run_carries_provenance(runs, tiny_data):
    run = records.load_run(runs[0])
    prov, summary = run.prov, run.summary
    # The code hash is `sha256sum CORE_FILES | sha256sum` of this checkout (the files that just ran).
    listing = "".join(f"{hashlib.sha256((ROOT / n).read_bytes()).hexdigest()}  {n}\n" for n in train.CORE_FILES)
    assert prov["code"]["sha256"] == hashlib.sha256(listing.encode()).hexdigest()
    assert list(prov["code"]["files"]) == list(train.CORE_FILES) and "provenance.py" in train.CORE_FILES
    # Data: train sha256 taken from the manifest (it matches), valid hashed; both equal the files' real sha256.
    assert prov["data"]["train_from_manifest"] is True
    for split in ("train", "valid"):
        (entry,) = prov["data"]["shards"][split]
        assert entry["sha256"] == sha256_file(tiny_data / entry["file"])
    manifest = json.loads((tiny_data / "tiny_manifest.json").read_text())
    assert prov["data"]["shards"]["train"][0]["sha256"] == manifest["splits"]["train"]["shards"][0]["sha256"]
    val = prov["validation"]
    assert (val["mask_rate"], val["mask_seed"]) == (summary["config"]["val_mask_rate"],
                                                    summary["config"]["val_mask_seed"])
    assert val["masked_tokens"] > 0 and all(v["masked_tokens"] == val["masked_tokens"] for v in summary["val"])
    assert val["shard_sha256"] == [prov["data"]["shards"]["valid"][0]["sha256"]]
    hw, machine = prov["hardware"], prov["machine"]
    assert hw["device"] == "cpu" and hw["world_size"] == 1 and hw["usable_cpus"] >= 1 and hw["summary"]
    if hw["cpu_id"] is not None:  # Linux on x86: the CPU's generation is part of what records compare
        assert hw["cpu_id"] == provenance.cpu_id(Path("/proc/cpuinfo").read_text()) and hw["cpu_id"] in hw["summary"]
    assert len(machine["loadavg_before"]) == 3 and len(machine["loadavg_after"]) == 3
    assert machine["wall_time_s"] > 0 and machine["cpu_time_s"] > 0
    assert machine["cpu_per_wall"] == pytest.approx(machine["cpu_time_s"] / machine["wall_time_s"])
    assert prov["checkpoint_sha256"] == sha256_file(Path(summary["checkpoints"][-1]) / "model.safetensors")
    assert prov["json_sha256"] == provenance.json_sha256(summary)
    # The text log states the code and data hashes that the JSON carries, and embeds exactly the code.
    log = run.log
    assert f"code sha256: {prov['code']['sha256']}" in log and f"data sha256: {prov['data']['sha256']}" in log
    assert provenance.read_code_sections(log) == {n: (ROOT / n).read_text() for n in train.CORE_FILES}
    for path in runs:
        assert records.integrity(records.load_run(path)) == []


AMD_ZEN5 = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 26
model\t\t: 2
model name\t: AMD EPYC
stepping\t: 1
flags\t\t: fpu sse4_2 avx avx2 avx512f avx512bw

processor\t: 1
vendor_id\t: GenuineIntel
cpu family\t: 6
"""


@pytest.mark.parametrize("cpuinfo, expected", [
    (AMD_ZEN5, "AuthenticAMD family 26 model 2 stepping 1, avx512"),  # the first processor only
    (AMD_ZEN5.replace(" avx512f avx512bw", ""), "AuthenticAMD family 26 model 2 stepping 1, avx2"),
    ("vendor_id: GenuineIntel\ncpu family: 6\nmodel: 143\nstepping: 8\nflags: avx2 avx512f amx_tile\n",
     "GenuineIntel family 6 model 143 stepping 8, avx512, amx"),
    ("processor: 0\nBogoMIPS: 50.00\nFeatures: fp asimd\n", None),  # an ARM cpuinfo: no family or model
    ("", None),
])
def test_cpu_id_tells_cpu_generations_apart(cpuinfo, expected):
    """The model name "AMD EPYC" named two CPU generations on this project's VMs; the id must differ between them."""
    assert provenance.cpu_id(cpuinfo) == expected


def test_data_fingerprint_hashes_what_the_manifest_does_not_match(tiny_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    manifest = json.loads((data / "tiny_manifest.json").read_text())
    manifest["splits"]["train"]["shards"][0]["sha256"] = "0" * 64  # a stale manifest: same file, tokens differ
    manifest["splits"]["train"]["shards"][0]["tokens"] += 1
    (data / "tiny_manifest.json").write_text(json.dumps(manifest))
    fingerprint = provenance.data_fingerprint(data, "tiny")
    assert fingerprint["train_from_manifest"] is False
    assert fingerprint["shards"]["train"][0]["sha256"] == sha256_file(data / "tiny_train_000000.bin")
    assert fingerprint["sha256"] == provenance.data_fingerprint(tiny_data, "tiny")["sha256"]


# ---- Statistics against scipy.stats ----------------------------------------------------------------------------

@pytest.mark.parametrize("values, target", [
    ([2.0912, 2.0975, 2.0890, 2.0931], 2.1), ([3.1, 3.3, 2.9], 3.0), ([1.0, 1.1, 0.9, 1.05, 0.97, 1.02, 0.99], 1.2),
])
def test_t_test_and_interval_match_scipy(values, target):
    ours = records.t_test_below(values, target)
    ref = scipy.stats.ttest_1samp(values, target, alternative="less")
    assert ours["t"] == pytest.approx(ref.statistic, rel=1e-12) and ours["p"] == pytest.approx(ref.pvalue, rel=1e-9)
    assert ours["df"] == len(values) - 1 and ours["sd"] == pytest.approx(np.std(values, ddof=1), rel=1e-12)
    interval = records.mean_interval(values)
    low, high = scipy.stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=scipy.stats.sem(values))
    assert (interval["low"], interval["high"]) == (pytest.approx(low, rel=1e-12), pytest.approx(high, rel=1e-12))
    assert interval["mean"] == pytest.approx(np.mean(values), rel=1e-12)


def test_t_test_with_no_spread():
    assert records.t_test_below([2.0, 2.0, 2.0], 2.1)["p"] == 0.0
    assert records.t_test_below([2.2, 2.2, 2.2], 2.1)["p"] == 1.0


def test_reported_step_is_the_first_from_which_every_step_passes(runs, tmp_path):
    """Losses that dip below the target at step 2, rise above at step 4, and pass at step 4 only for a looser
    target: the rule must not report the dip."""
    paths = copy_runs(runs, tmp_path)
    runs_ = [records.load_run(p) for p in paths]
    track = tiny_track(runs)
    stats, violations = records._time_statistics(track, runs_)
    assert not violations
    losses = {s: [r.val_at(s)["loss"] for r in runs_] for s in (0, 2, 4)}
    first = next(s for s in (0, 2, 4) if all(scipy.stats.ttest_1samp(losses[t], track.target_loss,
                                                                     alternative="less").pvalue < 0.01
                                             for t in (0, 2, 4) if t >= s))
    assert stats["reported_step"] == first
    times = [r.val_at(first)["train_time_s"] for r in runs_]
    assert stats["time_s"]["mean"] == pytest.approx(np.mean(times))
    # A later validation above the target voids an earlier pass.
    for r in runs_:
        r.summary["val"][-1]["loss"] = track.target_loss + 1
    stats, violations = records._time_statistics(track, runs_)
    assert stats is None and [v.rule for v in violations] == ["target"]


def test_time_budgeted_runs_are_compared_at_their_final_validations(runs, tmp_path):
    """Runs with a clock budget validate at different steps, and only their last validation follows the cooldown:
    the rule tests the final losses (against scipy) and reports the mean clock of those validations."""
    runs_ = [records.load_run(p) for p in copy_runs(runs, tmp_path)]
    track = tiny_track(runs)
    for i, r in enumerate(runs_):
        r.summary["config"]["max_train_time_hours"] = 0.01
        r.summary["val"][-1].update(step=10 + i, train_time_s=36.0 + i)  # no final step in common
    stats, violations = records._time_statistics(track, runs_)
    assert not violations and stats["reported_step"] == "final"
    finals = [r.summary["val"][-1]["loss"] for r in runs_]
    assert stats["loss"]["p"] == pytest.approx(scipy.stats.ttest_1samp(finals, track.target_loss,
                                                                       alternative="less").pvalue)
    assert stats["time_s"]["mean"] == pytest.approx(37.0)
    assert {v["step"] for v in stats["per_run"].values()} == {10, 11, 12}
    assert "each run's final validation" in records.headline({"statistics": stats, "rules": {"kind": "time"}})
    # Earlier validations below the target do not count: only the final ones.
    for r in runs_:
        r.summary["val"][-1]["loss"] = track.target_loss + 0.01
    stats, violations = records._time_statistics(track, runs_)
    assert stats is None and [v.rule for v in violations] == ["target"]
    assert "at the final validations" in violations[0].detail


# ---- Each refusal names its rule and run -----------------------------------------------------------------------

def test_refused_code_differs_between_runs(runs, tmp_path):
    """run3 becomes a consistent run of other code: its log embeds a changed model.py, and its JSON and the log's
    code line carry that code's hash. It passes integrity, and is refused as different code."""
    paths = copy_runs(runs, tmp_path)
    model = (ROOT / "model.py").read_text()
    log = paths[2].with_suffix(".txt").read_text().replace(model, model.replace("\n", "\n# a change\n", 1), 1)
    sources = provenance.read_code_sections(log)
    new_hash = provenance.code_hash(sources)
    forge(paths[2], summary_edit=lambda s: s["provenance"]["code"].update(
              sha256=new_hash, files={n: provenance.sha256_text(t) for n, t in sources.items()}),
          log_edit=lambda _: re.sub(r"^code sha256: [0-9a-f]{64}", f"code sha256: {new_hash}", log, count=1,
                                    flags=re.MULTILINE))
    assert records.integrity(records.load_run(paths[2])) == []
    assert rules_broken(refusals(tiny_track(runs), paths)) == {("same code", "run3")}


def test_refused_json_edited_by_hand(runs, tmp_path):
    paths = copy_runs(runs, tmp_path)
    forge(paths[1], summary_edit=lambda s: s["val"][-1].update(loss=s["val"][-1]["loss"] - 0.5), reseal=False)
    violations = refusals(tiny_track(runs), paths)
    assert ("integrity", "run2") in rules_broken(violations)
    assert any("changed after train.py wrote it" in v.detail for v in violations)


def test_refused_json_resealed_but_disagreeing_with_its_log(runs, tmp_path):
    paths = copy_runs(runs, tmp_path)
    forge(paths[1], summary_edit=lambda s: s["val"][-1].update(loss=s["val"][-1]["loss"] - 0.5))
    violations = refusals(tiny_track(runs), paths)
    assert rules_broken(violations) == {("integrity", "run2")}
    assert "validation lines" in violations[0].detail


def test_refused_log_code_edited(runs, tmp_path):
    paths = copy_runs(runs, tmp_path)
    model = (ROOT / "model.py").read_text()
    forge(paths[0], log_edit=lambda log: log.replace(model, model.replace("\n", "\n# a change\n", 1), 1))
    violations = refusals(tiny_track(runs), paths)
    assert rules_broken(violations) == {("integrity", "run1")}
    assert "files that differ: model.py" in violations[0].detail


def test_refused_missing_log(runs, tmp_path):
    paths = copy_runs(runs, tmp_path)
    paths[0].with_suffix(".txt").unlink()
    assert rules_broken(refusals(tiny_track(runs), paths)) == {("integrity", "run1")}


@pytest.mark.parametrize("override, rule", [
    (lambda t, n: dict(val_masked_tokens=t.val_masked_tokens + 1), "validation"),
    (lambda t, n: dict(valid_sha256=("0" * 64,)), "validation"),
    (lambda t, n: dict(val_mask_seed=t.val_mask_seed + 1), "validation"),
    (lambda t, n: dict(max_params=n), "parameters"),
    (lambda t, n: dict(device="cuda", gpu="H100"), "hardware"),
    (lambda t, n: dict(data_name="omg_prot50"), "data"),
    (lambda t, n: dict(train_sha256=("0" * 64,)), "data"),
], ids=["masked_tokens", "valid_sha256", "mask_seed", "max_params", "device", "data_name", "train_sha256"])
def test_refused_by_the_track(runs, override, rule):
    track = tiny_track(runs)
    n_params = records.load_run(runs[0]).summary["n_params"]
    violations = refusals(dataclasses.replace(track, **override(track, n_params)), runs)
    assert rules_broken(violations) == {(rule, f"run{i}") for i in (1, 2, 3)}


def test_refused_target_not_reached(runs):
    best = min(v["loss"] for p in runs for v in records.load_run(p).summary["val"])
    violations = refusals(tiny_track(runs, target_loss=round(best - 0.05, 3)), runs)
    assert [v.rule for v in violations] == ["target"] and "run1, run2, run3" == violations[0].run
    assert "target not reached" in violations[0].detail


def test_refused_too_few_runs(runs):
    assert rules_broken(refusals(tiny_track(runs), runs[:2])) == {("runs", "all runs")}


def test_refused_status_not_ok(runs, tmp_path):
    paths = copy_runs(runs, tmp_path)
    forge(paths[0], summary_edit=lambda s: s.update(status="interrupted"),
          log_edit=lambda log: log.replace("final: status ok;", "final: status interrupted;"))
    assert rules_broken(refusals(tiny_track(runs), paths)) == {("status", "run1")}


def test_refused_config_differs_or_seed_repeats(runs, tmp_path):
    paths = copy_runs(runs, tmp_path)

    def lr(summary):
        summary["config"]["lr_hidden"] = 0.07
    forge(paths[2], summary_edit=lr, log_edit=lambda log: log.replace("\nlr_hidden: 0.05\n", "\nlr_hidden: 0.07\n"))
    forge(paths[1], summary_edit=lambda s: s["config"].update(seed=1),
          log_edit=lambda log: log.replace("\nseed: 2\n", "\nseed: 1\n"))
    violations = refusals(tiny_track(runs), paths)
    assert rules_broken(violations) == {("same config", "run3"), ("same config", "run1"), ("same config", "run2")}
    assert any("lr_hidden" in v.detail for v in violations)


def test_cpu_track_refuses_until_its_constants_are_set(runs, monkeypatch):
    """Unset official constants are refusals that print what the runs carry (what the lead copies in)."""
    track = records.TRACKS["cpu"]
    if track.valid_sha256 is not None and track.target_loss is not None:
        pytest.skip("the CPU track's constants are set")
    violations = refusals(track, runs)
    broken = rules_broken(violations)
    assert ("data", "run1") in broken  # these runs are not on sp50
    unset = [v for v in violations if v.run == "all runs"]
    if track.valid_sha256 is None:
        sha = records.load_run(runs[0]).prov["validation"]["shard_sha256"][0]
        assert any(v.rule == "validation" and sha in v.detail for v in unset)
    if track.target_loss is None:
        assert any(v.rule == "target" and "target_loss" in v.detail for v in unset)


def test_warnings_for_noisy_machine_and_mixed_hardware(runs, tmp_path):
    paths = copy_runs(runs, tmp_path)
    forge(paths[0], summary_edit=lambda s: s["provenance"]["machine"].update(loadavg_before=[9.0, 9.0, 9.0]))
    forge(paths[1], summary_edit=lambda s: s["provenance"]["hardware"].update(summary="another machine"))
    violations, result = records.check_runs(tiny_track(runs), [records.load_run(p) for p in paths])
    assert not violations
    assert any(w.startswith("noisy machine: run1") for w in result["warnings"])
    assert any(w.startswith("hardware differs") and "another machine" in w for w in result["warnings"])


def test_representation_track_scores_probe_outputs(runs, tmp_path, monkeypatch):
    track = tiny_track(runs, kind="representation", target_loss=None, budget_s=3600.0,
                       probes=(("gb1", "three_vs_rest"), ("secondary_structure", None)))
    shas = [records.load_run(p).prov["checkpoint_sha256"] for p in runs]
    scores = {("gb1", 0): 0.5, ("gb1", 1): 0.6, ("gb1", 2): 0.55, ("secondary_structure", 0): 0.7,
              ("secondary_structure", 1): 0.72, ("secondary_structure", 2): 0.71}
    evals = [{"checkpoint_sha256": shas[i], "task": task, "split": "three_vs_rest" if task == "gb1" else None,
              "results": [{"features": "model", "score": score, "subsampled": False, "layer": None},
                          {"features": "onehot", "score": 0.1, "subsampled": False, "layer": None}]}
             for (task, i), score in scores.items()]
    violations, result = records.check_runs(track, [records.load_run(p) for p in runs], evals)
    assert not violations
    per_run = [(scores[("gb1", i)] + scores[("secondary_structure", i)]) / 2 for i in range(3)]
    assert result["statistics"]["score"]["mean"] == pytest.approx(np.mean(per_run))
    violations = records.check_runs(track, [records.load_run(p) for p in runs], evals[:5])[0]
    assert rules_broken(violations) == {("evaluation", "run3")}
    tight = dataclasses.replace(track, budget_s=1e-3)
    assert ("budget", "run1") in rules_broken(records.check_runs(tight, [records.load_run(p) for p in runs], evals)[0])
    # submit -> verify, with the evaluation files stored in the record
    monkeypatch.setitem(records.TRACKS, "test", track)
    eval_paths = []
    for i, e in enumerate(evals):
        eval_paths.append(tmp_path / f"eval{i}.json")
        eval_paths[-1].write_text(json.dumps(e))
    folder, _ = records.submit(runs, "test", "probe_test", tmp_path / "records", date="2026-01-03",
                               eval_paths=eval_paths)
    assert records.verify(folder)["statistics"]["score"]["mean"] == pytest.approx(np.mean(per_run))
    assert "score" in (folder / "README.md").read_text()


# ---- End to end: submit -> verify -> table ---------------------------------------------------------------------

def test_submit_verify_table(runs, tmp_path, monkeypatch, capsys):
    track = tiny_track(runs)
    monkeypatch.setitem(records.TRACKS, "test", track)
    records_dir = tmp_path / "records"
    code = records.main(["submit", *map(str, runs), "--track", "test", "--name", "tiny_baseline", "--date",
                         "2026-01-02", "--records_dir", str(records_dir), "--notes", "Three tiny runs."])
    assert code == 0, capsys.readouterr().err
    folder = records_dir / "2026-01-02_tiny_baseline"
    for name in ("record.json", "README.md", "config.yaml", "curves.png", "run1.json", "run1.txt", "run1.png",
                 "run3.txt"):
        assert (folder / name).is_file(), name
    record = json.loads((folder / "record.json").read_text())
    st = record["statistics"]
    step = st["reported_step"]
    losses = [records.load_run(p).val_at(step)["loss"] for p in runs]
    times = [records.load_run(p).val_at(step)["train_time_s"] for p in runs]
    assert st["loss"]["p"] == pytest.approx(scipy.stats.ttest_1samp(losses, track.target_loss,
                                                                    alternative="less").pvalue)
    assert st["loss"]["p"] < 0.01 and st["time_s"]["mean"] == pytest.approx(np.mean(times))
    readme = (folder / "README.md").read_text()
    assert "Three tiny runs." in readme and f"{st['time_s']['mean']:,.1f} s" in readme
    assert "python records.py verify records/2026-01-02_tiny_baseline" in readme

    # The YAML reconstructs the runs' config: train.py reads it back to the same values, seed aside.
    cfg, _ = train.parse_config(["--yaml_path", str(folder / "config.yaml"), "--seed", "1"])
    original = records.load_run(runs[0]).config
    ignored = set(records.BOOKKEEPING_KEYS) - {"data_dir"}
    assert {k: v for k, v in cfg.flat().items() if k not in ignored} == \
        {k: v for k, v in original.items() if k not in ignored}

    assert records.main(["verify", str(folder)]) == 0
    assert records.verify(folder)["name"] == "tiny_baseline"
    with pytest.raises(ValueError, match="exists"):
        records.submit(runs, "test", "tiny_baseline", records_dir, date="2026-01-02")

    readme_path, docs_path = tmp_path / "README.md", tmp_path / "TRAINING.md"
    readme_path.write_text(f"# x\n\n{records.RECORDS_START}\nold\n{records.RECORDS_END}\n\nafter\n")
    docs_path.write_text(f"rules\n{records.TRACKS_START}\nold\n{records.TRACKS_END}\n")
    assert records.main(["table", "--records_dir", str(records_dir), "--readme", str(readme_path), "--docs",
                         str(docs_path)]) == 0
    table = readme_path.read_text()
    assert "old" not in table and table.endswith("\nafter\n")
    assert "[tiny_baseline](records/2026-01-02_tiny_baseline/README.md)" in table
    assert "**cpu**" in table and "No records yet." in table
    assert records.render_tracks() in docs_path.read_text()

    # A stored record whose files were edited no longer verifies, and `table` refuses it.
    for edit, rule in ((lambda: (folder / "README.md").write_text(readme.replace("Three", "Four")), "record"),
                       (lambda: (folder / "run2.txt").write_text(
                           (folder / "run2.txt").read_text().replace("val_loss:", "val_loss:0", 1)), "integrity")):
        saved = {p.name: p.read_bytes() for p in folder.iterdir()}
        edit()
        with pytest.raises(records.RecordRefused) as err:
            records.verify(folder)
        assert rule in {v.rule for v in err.value.violations}
        assert records.main(["table", "--records_dir", str(records_dir), "--readme", str(readme_path),
                             "--docs", str(docs_path)]) == 1
        for name, data in saved.items():
            (folder / name).write_bytes(data)
    record["statistics"]["time_s"]["mean"] -= 1.0
    (folder / "record.json").write_text(json.dumps(record, indent=1) + "\n")
    with pytest.raises(records.RecordRefused, match="'statistics' differs"):
        records.verify(folder)


def test_curves_zoom_on_the_learning_and_draw_the_control(tmp_path):
    """The record's plot spans the losses after the first validation, the best control and the target; the
    untrained model's first validation (near ln 33) stays off the axis."""
    val = [{"train_time_s": 0.0, "loss": 3.5}, {"train_time_s": 60.0, "loss": 2.85},
           {"train_time_s": 120.0, "loss": 2.80}]
    run = types.SimpleNamespace(run_id="r1", config={"seed": 1},
                                summary={"val": val, "controls": {"best": 2.8224, "best_name": "ngram+composition"}})
    record = {"name": "zoom", "track": "cpu", "rules": {"kind": "time"},
              "statistics": {"target_loss": 2.82, "time_s": {"mean": 120.0}}}
    lo, hi = records.plot_curves(tmp_path / "curves.png", [run], record)
    # levels 2.85, 2.80, 2.8224, 2.82: span 0.05, 10% + 0.01 below and 25% + 0.01 above
    assert (lo, hi) == pytest.approx((2.80 - 0.005 - 0.01, 2.85 + 0.0125 + 0.01))
    assert hi < 3.5 and (tmp_path / "curves.png").stat().st_size > 0


def test_submit_refusal_is_printed_with_rule_and_run(runs, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(records.TRACKS, "test", tiny_track(runs, max_params=10))
    code = records.main(["submit", *map(str, runs), "--track", "test", "--name", "x", "--records_dir",
                         str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 1 and not any(tmp_path.iterdir())
    assert "refused: rule 'parameters', run1:" in err and "rule 'parameters', run3:" in err


def test_docs_state_the_generated_rules_and_readme_has_the_leaderboard():
    docs = (ROOT / "docs" / "TRAINING.md").read_text()
    start, end = docs.index(records.TRACKS_START), docs.index(records.TRACKS_END)
    assert docs[start + len(records.TRACKS_START):end].strip() == records.render_tracks().strip(), \
        "docs/TRAINING.md's track table is stale: run `python records.py table`"
    readme = (ROOT / "README.md").read_text()
    assert records.RECORDS_START in readme and records.RECORDS_END in readme
    assert "python records.py submit" in readme
