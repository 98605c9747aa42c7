"""The no-learning controls (controls.py) against independent counts on toy corpora where the answer is known.

Each control is recomputed here in plain Python (dictionaries over strings, no shared code beyond the vocabulary)
and compared position by position; the toy cases are small enough to check by hand.
"""
import math
from collections import Counter

import numpy as np
import pytest

import controls
import validation
from shards import write_shard
from vocab import CLS, EOS, MASK, TOKEN_TO_ID, encode_with_specials

T = TOKEN_TO_ID

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def write_corpus(tmp_path, train: list[str], valid: list[str] | None = None, name: str = "toy"):
    write_shard(tmp_path / f"{name}_train_000000.bin", np.concatenate([encode_with_specials(s) for s in train]))
    if valid is not None:
        write_shard(tmp_path / f"{name}_valid_000000.bin", np.concatenate([encode_with_specials(s) for s in valid]))
    return [tmp_path / f"{name}_train_000000.bin"]


def masked(sequence: str, positions: list[int]):
    """(input_ids, labels) of `<cls> sequence <eos>` with the given 1-based residue positions masked."""
    ids = encode_with_specials(sequence).astype(np.int64)
    labels = np.full(ids.size, -100)
    for p in positions:
        labels[p] = ids[p]
    inputs = ids.copy()
    inputs[positions] = MASK
    return inputs, labels


def test_unigram_and_composition_by_hand(tmp_path):
    # 5 train sequences (< 10: none held out, so the constants stay at their defaults and every token is counted)
    paths = write_corpus(tmp_path, ["AAAB", "ACAB", "MAAA", "MCCA", "AAAA"])
    model = controls.fit_controls(paths, mask_rate=0.15)
    assert model.train_tokens == 5 * 6 and model.fit_masked_tokens == 0
    counts = Counter("AAAB" "ACAB" "MAAA" "MCCA" "AAAA")  # A 13, B 2, C 3, M 2 (X etc. absent)
    smoothed = {a: counts.get(a, 0) + 0.5 for a in "LAGVSERTIDPKQNFYMHWCXBUZO"}
    # the maskable non-residue ids (fixed_mask's rule: all but <cls>, <eos>, <pad>) get the half count too
    smoothed |= {t: 0.5 for t in ("<unk>", ".", "-", "<null_1>", "<mask>")}
    total = sum(smoothed.values())
    assert total == 20 + 30 * 0.5
    assert model.unigram[T["A"]] == pytest.approx(13.5 / total)

    # Scored: "CAAC" with positions 2 (A) and 4 (C) masked. Visible residues C (pos 1) and A (pos 3): composition
    # p(a) = (c(a) + k u(a)) / (2 + k). Position 1 is not masked, so the first-residue rule is not used here.
    k = model.composition_k
    u = model.unigram
    sums = model.score([masked("CAAC", [2, 4])])
    expected = -(math.log((1 + k * u[T["A"]]) / (2 + k)) + math.log((1 + k * u[T["C"]]) / (2 + k)))
    assert sums["composition"] == pytest.approx(expected)
    assert sums["unigram"] == pytest.approx(-(math.log(u[T["A"]]) + math.log(u[T["C"]])))
    assert sums["masked_tokens"] == 2

    # First-residue rule: 2 of 5 train sequences start with M, 3 with A.
    first = model.first_residue
    assert first[T["M"]] == pytest.approx((2 + u[T["M"]]) / 6) and first[T["A"]] == pytest.approx((3 + u[T["A"]]) / 6)
    sums = model.score([masked("MKT", [1])])
    assert sums["composition"] == pytest.approx(-math.log(first[T["M"]]))


def reference_ngram(train: list[str], inputs, labels, beta1: float, beta2: float, unigram: np.ndarray) -> list:
    """Plain-Python ±2 n-gram with wildcards: contexts are strings over the flat train stream, '?' matches any."""
    stream = [-1, -1] + [int(t) for s in train for t in encode_with_specials(s)] + [-1, -1]  # -1: beyond the data
    table = Counter()
    for i in range(2, len(stream) - 2):
        if stream[i] in (CLS, EOS):
            continue
        table[tuple(stream[i - 2:i + 3])] += 1

    def count(l2, l1, a, r1, r2):
        return sum(n for key, n in table.items()
                   if all(want is None or want == got for want, got in zip((l2, l1, a, r1, r2), key)))

    out = []
    sym = [None if t == MASK else int(t) for t in inputs]
    padded = [None, None] + sym + [None, None]
    for i, y in enumerate(labels):
        if y == -100:
            continue
        l2, l1, r1, r2 = padded[i], padded[i + 1], padded[i + 3], padded[i + 4]
        total1 = sum(count(None, l1, a, r1, None) for a in range(33))
        p1 = (count(None, l1, y, r1, None) + beta1 * unigram[y]) / (total1 + beta1)
        total2 = sum(count(l2, l1, a, r1, r2) for a in range(33))
        out.append(math.log((count(l2, l1, y, r1, r2) + beta2 * p1) / (total2 + beta2)))
    return out


@pytest.mark.parametrize("seed", [0, 1])
def test_ngram_matches_a_plain_python_count(tmp_path, seed):
    rng = np.random.default_rng(seed)
    train = ["".join(rng.choice(list("ACDK"), size=rng.integers(3, 12))) for _ in range(9)]
    paths = write_corpus(tmp_path, train)
    model = controls.fit_controls(paths, mask_rate=0.15)
    model.beta1, model.beta2 = 3.0, 7.0
    scored = "".join(rng.choice(list("ACDK"), size=10))
    positions = [1, 2, 5, 9, 10]  # neighbours masked, the first and the last residue: every wildcard case
    inputs, labels = masked(scored, positions)
    got = model.log_probs(model.evidence(*controls.flatten([(inputs, labels)])))["ngram"]
    want = reference_ngram(train, inputs, labels, 3.0, 7.0, model.unigram)
    np.testing.assert_allclose(got, want, rtol=1e-10)


def test_ngram_learns_a_deterministic_pattern(tmp_path):
    paths = write_corpus(tmp_path, ["ACACACACAC"] * 9)
    model = controls.fit_controls(paths, mask_rate=0.15)
    model.beta1 = model.beta2 = 0.1
    sums = model.score([masked("ACACAC", [3])])  # A between C and C, after A C: nearly certain
    assert sums["ngram"] < 0.05 < sums["unigram"]


def test_combination_is_a_normalised_product(tmp_path):
    paths = write_corpus(tmp_path, ["ACDKACDK", "KKDDAACC", "ACCA"] * 3)
    model = controls.fit_controls(paths, mask_rate=0.15)
    evidence = model.evidence(*controls.flatten([masked("ACDKAC", [2, 3, 6])]))
    logp = model.log_probs(evidence)
    for name in controls.NAMES:
        assert np.all(logp[name] < 0), name
    # Recompute the combination from the two single controls' full distributions at the first masked position.
    uni, k = model.unigram, model.composition_k
    comp = (evidence["composition"][0] + k * uni) / (evidence["composition"][0].sum() + k)
    p1 = (evidence["c1"][0] + model.beta1 * uni) / (evidence["c1"][0].sum() + model.beta1)
    p2 = (evidence["c2"][0] + model.beta2 * p1) / (evidence["c2"][0].sum() + model.beta2)
    both = np.where(uni > 0, p2 * comp / np.where(uni > 0, uni, 1), 0)
    assert logp["ngram+composition"][0] == pytest.approx(math.log(both[T["C"]] / both.sum()))


def test_constants_are_fit_on_held_out_train_sequences_only(tmp_path):
    rng = np.random.default_rng(0)
    train = ["".join(rng.choice(list("ACDEFGHIKLMNPQRSTVWY"), size=40)) for _ in range(200)]
    paths = write_corpus(tmp_path, train)
    model = controls.fit_controls(paths, mask_rate=0.15)
    held_out = 200 // 10  # the first tenth of the first shard
    assert model.train_tokens == sum(len(s) + 2 for s in train[held_out:])  # held-out sequences are not counted
    n_masked = sum(int(round(0.15 * 40)) for _ in range(held_out))
    assert model.fit_masked_tokens == n_masked
    assert model.composition_k in controls.GRID and model.beta1 in controls.GRID and model.beta2 in controls.GRID
    # Uniform random residues: no context helps, so the fit prefers heavy smoothing toward the unigram.
    assert model.composition_k >= 100 and model.beta1 >= 20


def test_controls_score_exactly_the_validation_masks(tmp_path):
    rng = np.random.default_rng(3)
    valid = ["".join(rng.choice(list("ACDEFGHIKLMNPQRSTVWY"), size=rng.integers(5, 90))) for _ in range(30)]
    write_corpus(tmp_path, valid[:5] * 3, valid)
    batches = validation.load_validation_batches(tmp_path, "toy", "valid", row_length=128, max_length=64,
                                                 mask_rate=0.15, seed=5, rows_per_batch=3)
    pieces = controls.rows_to_sequences(batches)
    assert len(pieces) == 30
    assert sum(int((labels != -100).sum()) for _, labels in pieces) == batches.stats["masked_tokens"]
    # The same masks as evaluate.py's (mask_sequence of each cropped sequence), in the same order.
    direct = [validation.mask_sequence(encode_with_specials(s)[:64], 0.15, 5) for s in valid]
    for (a_in, a_lab), (b_in, b_lab) in zip(pieces, direct):
        np.testing.assert_array_equal(a_in, b_in)
        np.testing.assert_array_equal(a_lab, b_lab)


def test_summarise_picks_the_best():
    out = controls.summarise({"unigram": 30.0, "composition": 28.0, "ngram": 29.0, "ngram+composition": 27.5,
                              "masked_tokens": 10})
    assert out["best"] == 2.75 and out["best_name"] == "ngram+composition" and out["unigram"] == 3.0


def test_counting_is_bounded_by_max_train_tokens(tmp_path):
    paths = write_corpus(tmp_path, ["ACDK" * 10] * 8)
    model = controls.fit_controls(paths, mask_rate=0.15, max_train_tokens=100)
    assert model.train_tokens == 100
    assert model.counts[controls.WILD, controls.WILD, :, controls.WILD, controls.WILD].sum() < 100


def test_count_contexts_chunks_agree(tmp_path):
    tokens = np.concatenate([encode_with_specials("ACDKLM" * 7) for _ in range(5)])
    np.testing.assert_array_equal(controls.count_contexts(tokens, chunk=7), controls.count_contexts(tokens))


def test_train_logs_controls_and_gain(tmp_path):
    """train.py scores the controls once, on its own validation rows, and reports the gain at every validation."""
    import json

    import train
    from shards import find_shards

    root = controls.__file__.rsplit("/", 1)[0]
    argv = ["--data_dir", f"{root}/data/demo", "--data_name", "demo", "--log_dir", str(tmp_path / "logs"),
            "--save_dir", str(tmp_path / "ckpt"), "--log_name", "ctl", "--hidden_size", "32",
            "--num_attention_heads", "2", "--num_hidden_layers", "2", "--value_embeddings", "1", "--batch_size",
            "2048", "--row_length", "512", "--max_length", "512", "--num_workers", "0", "--num_steps", "2",
            "--eval_every", "1", "--untimed_warmup_steps", "0", "--controls_max_train_tokens", "300000"]
    summary = train.main(argv)
    batches = validation.load_validation_batches(f"{root}/data/demo", "demo", "valid", row_length=512,
                                                 max_length=512, mask_rate=0.15, seed=0, rows_per_batch=4)
    model = controls.fit_controls(find_shards(f"{root}/data/demo", "demo", "train"), 0.15, 300_000)
    expected = controls.summarise(model.score(controls.rows_to_sequences(batches)))
    assert summary["controls"] == pytest.approx(expected)
    assert summary["controls"]["masked_tokens"] == summary["val"][0]["masked_tokens"]
    assert len(summary["val"]) == 3
    for entry in summary["val"]:
        assert entry["gain"] == pytest.approx(expected["best"] - entry["loss"])
    assert summary["final_gain"] == summary["val"][-1]["gain"]
    text = (tmp_path / "logs" / "ctl.txt").read_text()
    assert "controls (nats per masked token" in text and text.count(" gain:") == 3
    assert json.loads((tmp_path / "logs" / "ctl.json").read_text())["controls"]["best_name"] == expected["best_name"]
    assert (tmp_path / "logs" / "ctl.png").stat().st_size > 0
