"""evaluate.py (MLM metrics and its CLI) against independent references: hand-computed metrics, scikit-learn, the
model's own loss. Tiny model (hidden 32, 2 layers), CPU. The probes are tested in test_probe.py."""
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
from model import PLM

from conftest import random_proteins


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---------------------------------------------------------------------------------------------------------------
# Metrics


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Row = true class, column = predicted class (the layout of validation.mlm_metrics' counts, tested there)."""
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    return cm


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


def test_metrics_match_sklearn_with_unpredicted_and_absent_classes():
    rng = np.random.default_rng(0)
    y_true = rng.integers(4, 24, size=3000)  # residue ids; specials never occur as labels
    y_pred = np.where(rng.random(3000) < 0.4, y_true, rng.integers(0, 14, size=3000))  # classes 14..23 rarely predicted
    got = evaluate.classification_metrics(confusion_matrix(y_true, y_pred, vocab.VOCAB_SIZE))
    assert got["accuracy"] == pytest.approx(skm.accuracy_score(y_true, y_pred))
    for name, fn in (("precision", skm.precision_score), ("recall", skm.recall_score), ("f1", skm.f1_score)):
        assert got[name] == pytest.approx(fn(y_true, y_pred, average="weighted", zero_division=0)), name
    assert got["mcc"] == pytest.approx(skm.matthews_corrcoef(y_true, y_pred))


def test_mcc_is_zero_when_one_class_is_always_predicted():
    y_true, y_pred = np.array([4, 5, 6, 4]), np.array([4, 4, 4, 4])
    got = evaluate.classification_metrics(confusion_matrix(y_true, y_pred, vocab.VOCAB_SIZE))
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


# ---------------------------------------------------------------------------------------------------------------
# Bad input: one clear line naming the thing, non-zero exit


def cli_error(capsys, argv) -> str:
    assert evaluate.main(argv) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) >= 1 and lines[-1].startswith("evaluate.py: error: ")
    return lines[-1]


def test_bad_inputs_give_one_clear_error(ckpt, tmp_path, capsys):
    empty = tmp_path / "empty.fasta"
    empty.write_text(">only a header\n\n")
    assert str(empty) in cli_error(capsys, ["mlm", "--checkpoint", str(ckpt), "--fasta", str(empty)])
    assert "missing.fasta" in cli_error(capsys, ["mlm", "--checkpoint", str(ckpt), "--fasta", "missing.fasta"])
    not_fasta = tmp_path / "notes.txt"
    not_fasta.write_text("MKV\n>a\nMK\n")
    assert "notes.txt: line 1" in cli_error(capsys, ["mlm", "--checkpoint", str(ckpt), "--fasta", str(not_fasta)])
    assert "toy_valid_*.bin" in cli_error(capsys, ["mlm", "--checkpoint", str(ckpt), "--data_dir", str(tmp_path),
                                                    "--data_name", "toy", "--split", "valid"])
    if not torch.cuda.is_available():
        assert "CUDA" in cli_error(capsys, ["mlm", "--checkpoint", str(ckpt), "--fasta", str(empty),
                                            "--device", "cuda"])


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


def test_cli_error_is_one_line_and_nonzero_exit(ckpt):
    run = subprocess.run([sys.executable, str(evaluate.REPO / "evaluate.py"), "mlm", "--checkpoint", str(ckpt),
                          "--fasta", "missing.fasta"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 1
    assert run.stderr.strip().splitlines() == ["evaluate.py: error: missing.fasta: no such file"]


def test_probe_command_points_to_probe_py(capsys):
    assert evaluate.main(["probe", "--task", "gb1"]) == 2
    assert capsys.readouterr().err.strip() == ("evaluate.py: representation probes moved to their own tool: "
                                               "python probe.py --task gb1")
