"""benchmarks/compare_runs.py against hand-computed times, scipy's Welch test and the refusal of runs validated on
other masks. Synthetic run summaries: validation losses that fall linearly in training time."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import compare_runs  # noqa: E402

CONTROLS = {"unigram": 2.9, "composition": 2.85, "ngram": 2.87, "ngram+composition": 2.84, "best": 2.84,
            "best_name": "ngram+composition", "masked_tokens": 1000}


def run(path: Path, slope: float, final_time: float = 100.0, controls=CONTROLS, cpu: str | None = None) -> str:
    """A run whose validation loss is 2.9 - slope·t, validated every 10 s; `cpu`: its recorded CPU id."""
    val = [{"step": k, "train_time_s": t, "tokens": 100 * k, "loss": 2.9 - slope * t}
           for k, t in enumerate(np.arange(0.0, final_time + 1e-9, 10.0))]
    path.write_text(json.dumps({"status": "ok", "val": val, "controls": controls, "steps": 50, "tokens": 50 * 4000, "n_params": 1234,
                                "world_size": 1, "tokens_per_s": 2000.0,
                                "config": {"mask_rate": 0.3, "bert_corruption": False},
                                "loader": {"masked_tokens": 50 * 1200},
                                "provenance": {"machine": {"cpu_per_wall": 0.99, "loadavg_before": [0.1, 0.2, 0.3]},
                                               **({"hardware": {"cpu_id": cpu}} if cpu else {})}}))
    return str(path)


def test_times_speedups_and_welch(tmp_path):
    fast = [run(tmp_path / f"f{i}.json", s) for i, s in enumerate((0.0020, 0.0021, 0.0019))]
    slow = [run(tmp_path / f"s{i}.json", s) for i, s in enumerate((0.0010, 0.0011, 0.0009))]
    result = compare_runs.compare({"slow": compare_runs.load_group(slow), "fast": compare_runs.load_group(fast)},
                                  [0.01])
    (row,) = result["targets"]
    assert row["target"] == pytest.approx(2.83)
    # loss 2.83 = 2.9 - slope·t -> t = 0.07 / slope
    expected_slow = [0.07 / s for s in (0.0010, 0.0011, 0.0009)]
    expected_fast = [0.07 / s for s in (0.0020, 0.0021, 0.0019)]
    assert row["groups"]["slow"]["values"] == pytest.approx(expected_slow)
    assert row["groups"]["fast"]["values"] == pytest.approx(expected_fast)
    speedup = row["groups"]["fast"]["speedup"]
    assert speedup["mean"] == pytest.approx(np.mean(expected_slow) / np.mean(expected_fast))
    low, high = speedup["interval"]
    assert low <= speedup["mean"] <= high and high - low < 0.5
    # the times' Welch test, against scipy on the hand-computed times; the baseline has none against itself
    welch_times = stats.ttest_ind(expected_fast, expected_slow, equal_var=False)
    assert row["groups"]["fast"]["welch_vs_baseline"] == pytest.approx(
        {"t": welch_times.statistic, "p": welch_times.pvalue})
    assert welch_times.statistic < 0 and "welch_vs_baseline" not in row["groups"]["slow"]
    finals_fast = [2.9 - s * 100 for s in (0.0020, 0.0021, 0.0019)]
    finals_slow = [2.9 - s * 100 for s in (0.0010, 0.0011, 0.0009)]
    assert result["final"]["fast"]["welch_vs_baseline"]["p"] == pytest.approx(
        stats.ttest_ind(finals_fast, finals_slow, equal_var=False).pvalue)
    text = compare_runs.report(result)
    assert f"{speedup['mean']:.2f}× [{low:.2f}, {high:.2f}], Welch p = {welch_times.pvalue:.2g}" in text
    assert f"Welch p = {result['final']['fast']['welch_vs_baseline']['p']:.2g}" in text
    # the fairness columns: 200,000 tokens and 60,000 masked tokens over 50 steps
    assert result["setup"]["fast"][0] == {"params": 1234, "steps": 50, "tokens_per_step": 4000.0, "masked_tokens_per_step": 1200.0,
                                          "mask_rate": 0.3, "corruption": "all <mask>", "tokens_per_s": 2000.0,
                                          "tokens_per_s_range": (10.0, 10.0), "cpu_per_wall": 0.99, "load_before": 0.1,
                                          "cpu_id": "not recorded"}
    assert "| fast | 1,234 | 50 | 4,000 | 1,200 | all <mask>, rate 0.3 | 2,000 | 10–10 | 0.99 | 0.10 | not recorded |" in text
    assert result["warnings"] == [] and "WARNING" not in text and "paired" not in row["groups"]["fast"]


def test_a_group_that_does_not_all_reach_a_target_gets_no_mean(tmp_path):
    runs = [run(tmp_path / "a.json", 0.0020), run(tmp_path / "b.json", 0.0002)]  # b ends at 2.88: never 2.83
    result = compare_runs.compare({"g": compare_runs.load_group(runs)}, [0.01])
    entry = result["targets"][0]["groups"]["g"]
    assert (entry["reached"], entry["n"]) == (1, 2) and "mean" not in entry
    assert "1/2 reached" in compare_runs.report(result)


def test_a_target_the_baseline_never_reaches_gets_a_lower_bound(tmp_path):
    # baseline: 2.9 - 0.0002·t reaches 2.88 at 100 s, never 2.83 (0.07 / 0.0002 = 350 s > 100 s of clock);
    # the fast group reaches 2.83 at 0.07 / slope: the speedup is at least 100 s over the mean of those times
    slow = [run(tmp_path / f"s{i}.json", s) for i, s in enumerate((0.0002, 0.00021))]
    fast = [run(tmp_path / f"f{i}.json", s) for i, s in enumerate((0.002, 0.0021))]
    result = compare_runs.compare({"slow": compare_runs.load_group(slow), "fast": compare_runs.load_group(fast)},
                                  [0.01])
    entry = result["targets"][0]["groups"]["fast"]
    bound = 100 / np.mean([0.07 / 0.002, 0.07 / 0.0021])
    assert "speedup" not in entry and entry["speedup_at_least"] == pytest.approx(bound)
    assert f"> {bound:.2f}× (the baseline never reached it)" in compare_runs.report(result)


def test_runs_on_other_masks_are_refused(tmp_path):
    other = dict(CONTROLS, masked_tokens=999)
    a, b = run(tmp_path / "a.json", 0.002), run(tmp_path / "b.json", 0.002, controls=other)
    with pytest.raises(SystemExit, match="b.json was validated on other masks"):
        compare_runs.compare({"x": compare_runs.load_group([a]), "y": compare_runs.load_group([b])}, [0.01])
    shifted = dict(CONTROLS, composition=CONTROLS["composition"] + 1e-4)  # same count, other sequences or masks
    c = run(tmp_path / "c.json", 0.002, controls=shifted)
    with pytest.raises(SystemExit, match="c.json was validated on other masks"):
        compare_runs.compare({"x": compare_runs.load_group([a]), "y": compare_runs.load_group([c])}, [0.01])


def test_controls_equal_up_to_summation_order_are_the_same_validation(tmp_path):
    """train.py sums the controls over packed rows, hf_reference.py over one sequence per row: the last bits differ
    (measured on sp50: 2.8224018041925865 vs 2.822401804192587), and that must not refuse the pair."""
    rounding = {k: (v + 1e-15 if isinstance(v, float) else v) for k, v in CONTROLS.items()}
    assert rounding != CONTROLS  # a few ulps apart, as measured
    a, b = run(tmp_path / "a.json", 0.002), run(tmp_path / "b.json", 0.002, controls=rounding)
    compare_runs.compare({"x": compare_runs.load_group([a]), "y": compare_runs.load_group([b])}, [0.01])


def test_gain_curve_and_its_plot(tmp_path):
    """The gap's learning curve: best control − loss at every validation, in minutes; the frame leaves the
    untrained step-0 point out and stops at the unigram control's level; --plot writes the picture."""
    a, b = run(tmp_path / "a.json", 0.0020), run(tmp_path / "b.json", 0.0010)
    groups = {"fast": compare_runs.load_group([a]), "slow": compare_runs.load_group([b])}
    curves = compare_runs.gain_curves(groups, CONTROLS)
    (fast,) = curves["fast"]
    # validation k at t = 10k s: loss 2.9 - 0.002·10k, gain 2.84 - loss = 0.02k - 0.06
    assert [m for m, _ in fast] == pytest.approx([10 * k / 60 for k in range(11)])
    assert [g for _, g in fast] == pytest.approx([0.02 * k - 0.06 for k in range(11)])
    # the frame: from the lowest gain after step 0 (slow run at 10 s: -0.05) to the best (fast run's last: 0.14),
    # padded by 5% of the span plus 0.001
    assert compare_runs.gain_ylim(curves, CONTROLS) == pytest.approx((-0.05 - 0.0105, 0.14 + 0.0105))
    # a run that starts far above every control is cut at the unigram control's level (2.84 - 2.9 = -0.06)
    diverged = {"g": [[(0.0, -0.7), (1.0, -0.2), (2.0, 0.05)]]}
    assert compare_runs.gain_ylim(diverged, CONTROLS) == pytest.approx((-0.06 - 0.0065, 0.05 + 0.0065))
    # a resumed run has no validation at clock 0: its first point is learning, and it counts
    resumed = {"g": [[(1.0, -0.01), (2.0, 0.05)]]}
    assert compare_runs.gain_ylim(resumed, CONTROLS) == pytest.approx((-0.01 - 0.004, 0.05 + 0.004))
    out = tmp_path / "gain.png"
    assert compare_runs.main(["--group", "fast", a, "--group", "slow", b, "--plot", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_output_writes_the_json_and_the_printed_tables_beside_it(tmp_path, capsys):
    """--output x.json also writes x.md with exactly the tables printed (the results .md files are not copied by
    hand, so they cannot go stale against their JSON)."""
    a, b = run(tmp_path / "a.json", 0.0020), run(tmp_path / "b.json", 0.0010)
    out = tmp_path / "res" / "cmp.json"
    assert compare_runs.main(["--group", "fast", a, "--group", "slow", b, "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert out.with_suffix(".md").read_text() == printed
    assert json.loads(out.read_text())["final"].keys() == {"fast", "slow"}


def test_paired_blocks_cancel_each_machine_s_speed(tmp_path):
    """--paired: block i = run i of each group, one machine each. Machine B runs everything 1.5x faster (slopes x1.5):
    pooled, its runs widen the intervals; within blocks the ratio is the same 2x in every block, so the paired
    interval is tight. Checked against hand-computed ratios and scipy's paired t-test on the log-times."""
    slow_slopes, fast_slopes = (0.0010, 0.0015, 0.0010), (0.0020, 0.0030, 0.0021)
    cpus = ("A", "B", "A")
    slow = [run(tmp_path / f"s{i}.json", sl, cpu=c) for i, (sl, c) in enumerate(zip(slow_slopes, cpus))]
    fast = [run(tmp_path / f"f{i}.json", sl, cpu=c) for i, (sl, c) in enumerate(zip(fast_slopes, cpus))]
    groups = {"slow": compare_runs.load_group(slow), "fast": compare_runs.load_group(fast)}
    result = compare_runs.compare(groups, [0.01], paired=True)
    t_slow, t_fast = [0.07 / x for x in slow_slopes], [0.07 / x for x in fast_slopes]
    paired = result["targets"][0]["groups"]["fast"]["paired"]
    ratios = [a / b for a, b in zip(t_slow, t_fast)]  # 2, 2, 2.1
    assert paired["ratios"] == pytest.approx(ratios) and paired["blocks"] == 3
    assert paired["geometric_mean"] == pytest.approx(np.exp(np.mean(np.log(ratios))))
    logs = np.log(ratios)
    half = stats.t.ppf(0.975, 2) * logs.std(ddof=1) / np.sqrt(3)
    assert paired["interval"] == pytest.approx((np.exp(logs.mean() - half), np.exp(logs.mean() + half)))
    assert paired["p"] == pytest.approx(stats.ttest_rel(np.log(t_slow), np.log(t_fast)).pvalue)
    # the machines' speed cancels within blocks: the paired interval is several times narrower than the pooled one
    pooled = compare_runs.compare(groups, [0.01])["targets"][0]["groups"]["fast"]["speedup"]["interval"]
    assert 3 * (paired["interval"][1] - paired["interval"][0]) < pooled[1] - pooled[0]
    assert result["machines"] == {"A": 4, "B": 2} and "several CPUs" in result["warnings"][0]
    text = compare_runs.report(result)
    assert "WARNING: the runs come from several CPUs (A: 4 runs; B: 2 runs)" in text
    assert f"paired {paired['geometric_mean']:.2f}× [{paired['interval'][0]:.2f}, {paired['interval'][1]:.2f}]" in text
    # unpaired, the same runs get the warning and no paired entry
    unpaired = compare_runs.compare(groups, [0.01])
    assert "paired" not in unpaired["targets"][0]["groups"]["fast"] and "or --paired" in unpaired["warnings"][0]


def test_paired_refuses_blocks_across_machines_and_unequal_groups(tmp_path):
    a = [run(tmp_path / "a0.json", 0.001, cpu="A"), run(tmp_path / "a1.json", 0.0011, cpu="A")]
    b = [run(tmp_path / "b0.json", 0.002, cpu="A"), run(tmp_path / "b1.json", 0.0021, cpu="B")]
    with pytest.raises(SystemExit, match="block 2 .*b1.json.* ran on different CPUs"):
        compare_runs.compare({"a": compare_runs.load_group(a), "b": compare_runs.load_group(b)}, [0.01], paired=True)
    with pytest.raises(SystemExit, match="same number of runs"):
        compare_runs.compare({"a": compare_runs.load_group(a), "b": compare_runs.load_group(b[:1])}, [0.01],
                             paired=True)
    # a run made before CPU ids were recorded pairs with any: only recorded ids can disagree
    c = [run(tmp_path / "c0.json", 0.002), run(tmp_path / "c1.json", 0.0023, cpu="A")]
    compare_runs.compare({"a": compare_runs.load_group(a), "c": compare_runs.load_group(c)}, [0.01], paired=True)


def test_tokens_ladder_separates_learning_per_token_from_a_host_slowdown(tmp_path):
    """Two runs with the same loss per token (2.9 - 0.02 per million tokens), 100k tokens/s, but the host halves the
    second's throughput after 50 s (a hypervisor neighbour; CPU/wall would not show it). At 2.79 (0.05 below the
    control, 5.5M tokens): the clock says the second is slower (55 s vs 5M tokens at 50 s + 0.5M at 50k/s = 60 s),
    the tokens ladder says they learn alike (5.5M each), and the within-run throughput range shows the slowdown."""
    def write(name, tokens_at):
        val = [{"step": k, "train_time_s": float(t), "tokens": tokens_at(t), "loss": 2.9 - 0.02 * tokens_at(t) / 1e6}
               for k, t in enumerate(range(0, 101, 10))]
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({"status": "ok", "val": val, "controls": CONTROLS, "steps": 10,
                                    "tokens": val[-1]["tokens"], "config": {}}))
        return compare_runs.load_group([str(path)])
    groups = {"steady": write("steady", lambda t: 1e5 * t),
              "slowed": write("slowed", lambda t: 1e5 * t if t <= 50 else 5e6 + 5e4 * (t - 50))}
    result = compare_runs.compare(groups, [0.05])
    by_clock, by_tokens = result["targets"][0]["groups"], result["targets_by_tokens"][0]["groups"]
    assert by_clock["steady"]["values"] == pytest.approx([55.0])
    assert by_clock["slowed"]["values"] == pytest.approx([60.0])
    assert by_clock["slowed"]["speedup"]["mean"] == pytest.approx(55 / 60)
    assert by_tokens["steady"]["values"] == pytest.approx([5.5e6])
    assert by_tokens["slowed"]["values"] == pytest.approx([5.5e6])
    assert by_tokens["slowed"]["speedup"]["mean"] == pytest.approx(1.0)
    assert [s[0]["tokens_per_s_range"] for s in result["setup"].values()] == [(1e5, 1e5), (5e4, 1e5)]
    text = compare_runs.report(result)
    assert "| 2.7900 (−0.05) | 55 s | 60 s; 0.92× (no interval: < 2 runs) |" in text
    assert "| 2.7900 (−0.05) | 5.50M | 5.50M; 1.00× (no interval: < 2 runs) |" in text
    assert "| 50,000–100,000 |" in text
