"""evaluate.py against independent references: hand-computed metrics, scikit-learn, the model's own loss, the
FLIP file counts in ../shared/data/flip/SOURCE.md. Tiny model (hidden 32, 2 layers), small task slices, CPU."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

import checkpoint
import evaluate
import shards
import vocab
from validation import fixed_mask
from model import PLM, ModelConfig

TINY = dict(hidden_size=32, num_attention_heads=2, num_hidden_layers=2, value_embeddings=1)
STANDARD = "LAGVSERTIDPKQNFYMHWC"


def scrambled_model(seed: int = 0) -> PLM:
    """A tiny model with every parameter non-trivial: init_weights zeroes the head and the output projections, so
    an untrained model would predict one class everywhere and ignore context, making most checks vacuous."""
    torch.manual_seed(seed)
    model = PLM(ModelConfig(**TINY))
    model.init_weights()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5 * torch.randn_like(p))
    return model.eval()


def random_proteins(n: int, seed: int = 0, low: int = 5, high: int = 120) -> list[str]:
    rng = np.random.default_rng(seed)
    return ["".join(rng.choice(list(STANDARD), size=rng.integers(low, high))) for _ in range(n)]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model():
    return scrambled_model()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, model):
    directory = tmp_path_factory.mktemp("ckpt")
    checkpoint.save_model(model, directory)
    return directory


@pytest.fixture(scope="module")
def flip(shared_data):
    return shared_data / "flip"


# ---------------------------------------------------------------------------------------------------------------
# Metrics


def test_metrics_on_hand_computed_confusion_matrix():
    # rows = true class, columns = predicted; worked out by hand below
    cm = np.array([[5, 1, 0],
                   [2, 3, 1],
                   [0, 0, 4]])
    # 16 items, 12 correct; true counts (6, 6, 4), predicted counts (7, 4, 5)
    # precision 5/7, 3/4, 4/5; recall 5/6, 3/6, 4/4; F1_k = 2TP/(2TP+FP+FN) = 10/13, 6/10, 8/9
    # MCC = (12·16 − (7·6 + 4·6 + 5·4)) / sqrt((16² − (49+16+25))·(16² − (36+36+16))) = 106 / sqrt(166·168)
    got = evaluate.classification_metrics(cm)
    assert got["accuracy"] == pytest.approx(12 / 16)
    assert got["precision"] == pytest.approx((6 * 5 / 7 + 6 * 3 / 4 + 4 * 4 / 5) / 16)
    assert got["recall"] == pytest.approx(12 / 16)
    assert got["f1"] == pytest.approx((6 * 10 / 13 + 6 * 6 / 10 + 4 * 8 / 9) / 16)
    assert got["mcc"] == pytest.approx(106 / np.sqrt(166 * 168))
    assert got["mcc"] == pytest.approx(0.6347415, abs=1e-6)


def test_confusion_matrix_layout():
    cm = evaluate.confusion_matrix(np.array([0, 0, 1, 2, 2]), np.array([0, 1, 1, 2, 0]), 3)
    np.testing.assert_array_equal(cm, [[1, 1, 0], [0, 1, 0], [1, 0, 1]])


def test_metrics_match_sklearn_with_unpredicted_and_absent_classes():
    rng = np.random.default_rng(0)
    y_true = rng.integers(4, 24, size=3000)  # residue ids; specials never occur as labels
    y_pred = np.where(rng.random(3000) < 0.4, y_true, rng.integers(0, 14, size=3000))  # classes 14..23 rarely predicted
    got = evaluate.classification_metrics(evaluate.confusion_matrix(y_true, y_pred, vocab.VOCAB_SIZE))
    assert got["accuracy"] == pytest.approx(skm.accuracy_score(y_true, y_pred))
    for name, fn in (("precision", skm.precision_score), ("recall", skm.recall_score), ("f1", skm.f1_score)):
        assert got[name] == pytest.approx(fn(y_true, y_pred, average="weighted", zero_division=0)), name
    assert got["mcc"] == pytest.approx(skm.matthews_corrcoef(y_true, y_pred))


def test_mcc_is_zero_when_one_class_is_always_predicted():
    y_true, y_pred = np.array([4, 5, 6, 4]), np.array([4, 4, 4, 4])
    got = evaluate.classification_metrics(evaluate.confusion_matrix(y_true, y_pred, vocab.VOCAB_SIZE))
    assert got["mcc"] == 0.0 == skm.matthews_corrcoef(y_true, y_pred)


# ---------------------------------------------------------------------------------------------------------------
# MLM metrics


def reference_mlm(model, sequences, mask_rate, seed, max_length):
    """One sequence at a time through the model's own loss (forward), predictions from its logits."""
    loss_sum, n, y_true, y_pred = 0.0, 0, [], []
    for s in sequences:
        tokens = vocab.encode_with_specials(s)[:max_length].astype(np.int64)
        mask = fixed_mask(tokens, mask_rate, seed)
        input_ids = torch.tensor(np.where(mask, vocab.MASK, tokens), dtype=torch.int64)[None]
        labels = torch.tensor(np.where(mask, tokens, -100), dtype=torch.int64)[None]
        seq_ids = torch.zeros_like(input_ids, dtype=torch.int32)
        with torch.no_grad():
            s_loss, s_n = model(input_ids, seq_ids, labels)
            logits = model.logits(input_ids, seq_ids)[0, torch.from_numpy(mask)]
        loss_sum, n = loss_sum + s_loss.item(), n + int(s_n)
        y_true += tokens[mask].tolist()
        y_pred += logits.argmax(-1).tolist()
    return loss_sum / n, n, np.array(y_true), np.array(y_pred)


def test_mlm_metrics_match_per_sequence_reference(model):
    sequences = random_proteins(25) + ["ACDEFGHIKLMNPQRSTVWY" * 5]  # several longer than max_length 64
    got = evaluate.mlm_metrics(model, sequences, mask_rate=0.15, seed=3, max_length=64, batch_tokens=512)
    loss, n, y_true, y_pred = reference_mlm(model, sequences, 0.15, 3, 64)
    assert got["n_masked"] == n and got["n_sequences"] == 26
    assert got["n_cropped"] == sum(len(s) + 2 > 64 for s in sequences) > 1
    assert got["loss"] == pytest.approx(loss, rel=1e-5)
    assert got["perplexity"] == pytest.approx(np.exp(loss), rel=1e-5)
    assert got["accuracy"] == pytest.approx(skm.accuracy_score(y_true, y_pred))
    assert got["mcc"] == pytest.approx(skm.matthews_corrcoef(y_true, y_pred))
    assert 0.0 < got["accuracy"] < 1.0  # a scrambled model is neither always right nor always wrong


def test_mlm_masks_fixed_across_calls_and_batch_sizes(model, monkeypatch):
    sequences = random_proteins(30, seed=1)
    seen = {}
    original = PLM.logits

    def recording_logits(self, input_ids, seq_ids):
        for row, ids in zip(input_ids, seq_ids):  # rows are packed: each sequence is one seq_id of a row
            for s in ids[ids >= 0].unique():
                seen.setdefault(current, set()).add(row[ids == s].numpy().tobytes())
        return original(self, input_ids, seq_ids)

    monkeypatch.setattr(PLM, "logits", recording_logits)
    results = {}
    for current in (128, 4096, "again"):
        results[current] = evaluate.mlm_metrics(model, sequences, seed=7, max_length=1024,
                                                batch_tokens=4096 if current == "again" else current)
    expected = {np.where(fixed_mask(t, 0.15, 7), vocab.MASK, t).astype(np.int64).tobytes()
                for t in map(vocab.encode_with_specials, sequences)}
    assert seen[128] == seen[4096] == seen["again"] == expected
    assert results[4096] == results["again"]  # deterministic: identical numbers on a rerun
    for key in ("loss", "accuracy", "precision", "recall", "f1", "mcc"):
        assert results[128][key] == pytest.approx(results[4096][key], rel=1e-5), key


def test_mlm_cli_fasta_and_shards_agree(ckpt, tmp_path, capsys):
    sequences = random_proteins(12, seed=2)
    fasta = tmp_path / "seqs.fasta"
    fasta.write_text("".join(f">s{i} note\n{s[:30]}\n{s[30:]}\n" for i, s in enumerate(sequences)))
    shards.write_shard(tmp_path / "toy_valid_000000.bin",
                       np.concatenate([vocab.encode_with_specials(s) for s in sequences]))
    out_fasta, out_shards = tmp_path / "a.json", tmp_path / "b.json"
    assert evaluate.main(["mlm", "--checkpoint", str(ckpt), "--fasta", str(fasta), "--device", "cpu",
                          "--output", str(out_fasta)]) == 0
    assert "perplexity" in capsys.readouterr().out
    assert evaluate.main(["mlm", "--checkpoint", str(ckpt), "--data_dir", str(tmp_path), "--data_name", "toy",
                          "--split", "valid", "--output", str(out_shards)]) == 0
    a, b = json.loads(out_fasta.read_text()), json.loads(out_shards.read_text())
    assert a["n_sequences"] == b["n_sequences"] == 12
    for key in ("loss", "perplexity", "accuracy", "precision", "recall", "f1", "mcc", "n_masked"):
        assert a[key] == b[key], key


def test_sequences_from_shards_splits_the_stream(tmp_path):
    pieces = [vocab.encode_with_specials(s) for s in ("MKV", "AC", "WWWWW")]
    shards.write_shard(tmp_path / "x_test_000000.bin", np.concatenate(pieces[:2]))
    shards.write_shard(tmp_path / "x_test_000001.bin", pieces[2])
    got = evaluate.sequences_from_shards(tmp_path, "x", "test")
    assert [p.tolist() for p in got] == [p.tolist() for p in pieces]


# ---------------------------------------------------------------------------------------------------------------
# Tasks and the probe recipe


def test_task_readers_match_the_documented_counts(flip):
    # ../shared/data/flip/SOURCE.md: train (excl. val) / val / test
    expected = {"gb1": (2691, 299, 5743), "secondary_structure": (9712, 1080, 364),
                "conservation": (9392, 555, 519)}
    for name, counts in expected.items():
        task = evaluate.load_task(name, flip)
        assert (len(task.train.sequences), len(task.valid.sequences), len(task.test.sequences)) == counts, name
    melt = evaluate.load_task("meltome_draft", flip)
    assert len(melt.train.sequences) + len(melt.valid.sequences) == 2940 and len(melt.test.sequences) == 1504
    assert len(melt.valid.sequences) == 294 and any("DRAFT" in note for note in melt.notes)
    ss = evaluate.load_task("secondary_structure", flip)
    resolved = sum(int((t >= 0).sum()) for p in (ss.train, ss.valid, ss.test) for t in p.targets)
    assert resolved == 2_658_218  # the 1s of mask.fasta


def test_chunking_keeps_every_residue_and_pools_over_all_of_them():
    sequence = random_proteins(1, seed=4, low=2500, high=2501)[0]
    pieces = evaluate.chunk_sequence(sequence, 1022)
    assert "".join(pieces) == sequence and len(pieces) == 3 and max(map(len, pieces)) <= 1022
    assert max(map(len, pieces)) - min(map(len, pieces)) <= 1
    per_residue = evaluate.embed_sequences(evaluate.onehot_embedder, [sequence], per_residue=True,
                                           max_length=1024, batch_tokens=4096)
    np.testing.assert_array_equal(per_residue[0], evaluate.onehot_embedder([sequence])[0])
    pooled = evaluate.embed_sequences(evaluate.onehot_embedder, [sequence], per_residue=False,
                                      max_length=1024, batch_tokens=4096)
    composition = np.array([sequence.count(c) for c in vocab.RESIDUES]) / len(sequence)
    np.testing.assert_allclose(pooled[0], composition, atol=1e-6)


def test_model_features_are_the_models_embeddings(model):
    sequences = random_proteins(5, seed=5)
    embedder = evaluate.model_embedder(model, None, 256, "cpu")
    got = evaluate.embed_sequences(embedder, sequences, per_residue=True, max_length=1024, batch_tokens=256)
    for s, features in zip(sequences, got):
        ids = torch.tensor(vocab.encode_with_specials(s), dtype=torch.int64)[None]
        with torch.no_grad():
            expected = model.hidden_states(ids, torch.zeros_like(ids, dtype=torch.int32))[0, 1:-1]
        np.testing.assert_allclose(features, expected.numpy(), atol=1e-5)


@pytest.mark.parametrize("task", list(evaluate.TASKS))
def test_every_probe_runs_end_to_end(model, flip, task):
    n = 6 if task in ("secondary_structure", "conservation") else 40
    result = evaluate.run_probe(model, task, flip, max_train=n, max_test=n)
    assert (result["n_train"], result["n_valid"], result["n_test"]) == (n, n, n)
    assert result["subsampled"] and any("SUBSAMPLED" in note for note in result["notes"])
    assert result["lambda"] in evaluate.REGULARISATION_GRID and result["dim"] == TINY["hidden_size"]
    assert np.isfinite(result["score"]) and -1 <= result["score"] <= 1
    json.dumps(evaluate._json_safe(result))
    if task in ("secondary_structure", "conservation"):
        assert result["n_test_residues"] > 100


def test_onehot_control_on_gb1_has_positive_spearman(flip):
    # Mean-pooled one-hot = amino-acid composition; across GB1 variants it changes only through the 4 mutated
    # sites, which still carries a real signal (which residues appear, not where): Spearman ~0.5 on this slice.
    task = evaluate.load_task("gb1", flip)
    result = evaluate.run_probe(None, task, control="onehot", max_train=300, max_test=300)
    assert result["score"] > 0.3
    # The same pipeline with the training targets shuffled must lose the signal: the labels are wired correctly.
    rng = np.random.default_rng(0)
    shuffled = evaluate.Task(**{**vars(task), "train": evaluate.Partition(
        task.train.sequences, list(rng.permutation(task.train.targets)))})
    assert abs(evaluate.run_probe(None, shuffled, control="onehot", max_train=300, max_test=300)["score"]) < 0.2


def test_embedding_cache_avoids_re_embedding(model, flip, tmp_path, monkeypatch):
    calls = []
    original = PLM.embed
    monkeypatch.setattr(PLM, "embed", lambda self, *a, **k: calls.append(len(a[0])) or original(self, *a, **k))
    options = dict(max_train=20, max_test=20, cache_dir=tmp_path, model_id="abc")
    first = evaluate.run_probe(model, "gb1", flip, **options)
    assert calls and len(list(tmp_path.glob("gb1_*.npz"))) == 3
    calls.clear()
    second = evaluate.run_probe(model, "gb1", flip, **options)
    assert calls == [] and second == first
    evaluate.run_probe(model, "gb1", flip, **{**options, "max_test": 21})  # different sequences: miss for test only
    assert sum(calls) == 21
    calls.clear()
    evaluate.run_probe(model, "gb1", flip, **{**options, "model_id": "other weights"})
    assert sum(calls) == 60


def test_random_init_twin_ignores_the_trained_weights(flip):
    options = dict(control="random_init", max_train=30, max_test=30)
    first, second = scrambled_model(seed=1), scrambled_model(seed=2)
    state = torch.random.get_rng_state()
    a = evaluate.run_probe(first, "gb1", flip, **options)
    b = evaluate.run_probe(second, "gb1", flip, **options)
    assert a["score"] == b["score"] and a["features"] == "random_init"
    assert torch.equal(state, torch.random.get_rng_state())  # the caller's RNG stream is untouched


def test_probe_cli_with_controls(ckpt, flip, tmp_path, capsys):
    out = tmp_path / "probe.json"
    assert evaluate.main(["probe", "--checkpoint", str(ckpt), "--task", "gb1", "--data_dir", str(flip),
                          "--with_controls", "--max_train", "20", "--max_test", "20", "--cache_dir", "",
                          "--device", "cpu", "--output", str(out)]) == 0
    table = capsys.readouterr().out
    assert all(word in table for word in ("model", "onehot", "random_init", "ESM2-8M 81.8"))
    payload = json.loads(out.read_text())
    assert [r["features"] for r in payload["results"]] == ["model", "onehot", "random_init"]
    assert payload["published_frozen_percent"]["ESM2-35M"] == {"mean": 82.7, "error": 0.3}


# ---------------------------------------------------------------------------------------------------------------
# Bad input: one clear line naming the thing, non-zero exit


def cli_error(capsys, argv) -> str:
    assert evaluate.main(argv) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) >= 1 and lines[-1].startswith("evaluate.py: error: ")
    return lines[-1]


def test_bad_inputs_give_one_clear_error(ckpt, flip, tmp_path, capsys):
    probe = ["probe", "--checkpoint", str(ckpt), "--data_dir", str(flip)]
    assert "'nonsense'" in cli_error(capsys, probe + ["--task", "nonsense"])
    assert "gb1_splits.zip" in cli_error(capsys, ["probe", "--control", "onehot", "--task", "gb1",
                                                  "--data_dir", str(tmp_path)])
    assert "'five_vs_rest'" in cli_error(capsys, probe + ["--task", "gb1", "--split", "five_vs_rest"])
    assert "--split" in cli_error(capsys, probe + ["--task", "conservation", "--split", "three_vs_rest"])
    assert "--layer 9" in cli_error(capsys, probe + ["--task", "gb1", "--layer", "9"])
    empty = tmp_path / "empty.fasta"
    empty.write_text(">only a header\n\n")
    assert str(empty) in cli_error(capsys, ["mlm", "--checkpoint", str(ckpt), "--fasta", str(empty)])
    assert "missing.fasta" in cli_error(capsys, ["mlm", "--checkpoint", str(ckpt), "--fasta", "missing.fasta"])
    assert "toy_valid_*.bin" in cli_error(capsys, ["mlm", "--checkpoint", str(ckpt), "--data_dir", str(tmp_path),
                                                    "--data_name", "toy", "--split", "valid"])
    if not torch.cuda.is_available():
        assert "CUDA" in cli_error(capsys, probe + ["--task", "gb1", "--device", "cuda"])
    with pytest.raises(evaluate.EvalError, match="model_id"):  # a cache keyed by nothing would serve stale features
        evaluate.run_probe(scrambled_model(), "gb1", flip, cache_dir=tmp_path)
    with pytest.raises(evaluate.EvalError, match="--layer"):
        evaluate.run_probe(None, "gb1", flip, control="onehot", layer=1)


def test_incompatible_checkpoint_is_named(ckpt, tmp_path, capsys):
    fasta = tmp_path / "s.fasta"
    fasta.write_text(">a\nMKVLA\n")
    config = json.loads((ckpt / checkpoint.CONFIG_FILE).read_text())
    for name, edit in (("wider", {"hidden_size": 64}), ("newer", {"flux_capacitor": 1}),
                       ("invalid", {"architecture": "lstm"})):
        bad = tmp_path / name
        bad.mkdir()
        (bad / checkpoint.MODEL_FILE).write_bytes((ckpt / checkpoint.MODEL_FILE).read_bytes())
        (bad / checkpoint.CONFIG_FILE).write_text(json.dumps({**config, **edit}))
        message = cli_error(capsys, ["mlm", "--checkpoint", str(bad), "--fasta", str(fasta)])
        assert str(bad) in message and "incompatible" in message, message
    assert "not a checkpoint" in cli_error(capsys, ["mlm", "--checkpoint", str(tmp_path), "--fasta", str(fasta)])


def test_cli_error_is_one_line_and_nonzero_exit(flip):
    run = subprocess.run([sys.executable, str(evaluate.REPO / "evaluate.py"), "probe", "--control", "onehot",
                          "--task", "nonsense", "--data_dir", str(flip)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 1
    assert run.stderr.strip().splitlines() == [
        "evaluate.py: error: unknown task 'nonsense'; choose from gb1, secondary_structure, conservation, "
        "meltome_draft"]
