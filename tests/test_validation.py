"""validation.py, the one fixed-mask MLM evaluation: its masks, its two batch layouts and its sums, against
per-sequence references. (Its training-row guarantees, file order, ranks and shapes, are in test_dataloader.py.)"""
import contextlib

import numpy as np
import pytest
import torch

import shards
import validation
import vocab
from model import PLM, ModelConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def random_sequences(n: int, seed: int = 0, low: int = 3, high: int = 90) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [vocab.encode_with_specials("".join(rng.choice(list("ACDEFGHIKLMNPQRSTVWY"), size=rng.integers(low, high))))
            for _ in range(n)]


def sequences_in(batches) -> list[tuple[np.ndarray, np.ndarray]]:
    """(input_ids, labels) of every sequence of a list of batches, read back through seq_ids."""
    out = []
    for batch in batches:
        for ids, labels, seq_ids in zip(batch["input_ids"], batch["labels"], batch["seq_ids"]):
            for s in seq_ids[seq_ids >= 0].unique().tolist():
                out.append((ids[seq_ids == s].numpy(), labels[seq_ids == s].numpy()))
    return out


def test_mask_sequence_masks_exactly_the_fixed_mask():
    for tokens in random_sequences(20):
        ids, labels = validation.mask_sequence(tokens, 0.15, 3)
        mask = validation.fixed_mask(tokens, 0.15, 3)
        assert ids.dtype == labels.dtype == np.int64 and mask.sum() == max(1, round(0.15 * (tokens.size - 2)))
        assert (ids[mask] == vocab.MASK).all() and (ids[~mask] == tokens[~mask]).all()
        assert (labels[mask] == tokens[mask]).all() and (labels[~mask] == -100).all()


def test_both_layouts_hold_every_sequence_once_with_its_fixed_mask():
    sequences = random_sequences(40, seed=1)
    expected = sorted(tuple(a.tobytes() for a in validation.mask_sequence(t, 0.2, 5)) for t in sequences)
    packed = validation.packed_batches(sequences, row_length=128, mask_rate=0.2, seed=5, rows_per_batch=3)
    padded = validation.padded_batches(sequences, mask_rate=0.2, seed=5, batch_tokens=300)
    for batches in (packed, padded):
        assert sorted((ids.tobytes(), labels.tobytes()) for ids, labels in sequences_in(batches)) == expected
    assert {tuple(b["input_ids"].shape) for b in packed} == {(3, 128)}  # one shape
    for batch in padded:  # one sequence per row, padded to the longest, within the token budget
        rows, width = batch["input_ids"].shape
        assert (batch["seq_ids"] <= 0).all() and (batch["seq_ids"][:, 0] == 0).all()
        assert rows * width <= 300 or rows == 1
        assert ((batch["seq_ids"] < 0) == (batch["input_ids"] == vocab.PAD)).all()
    assert packed.stats["masked_tokens"] == sum(int((b["labels"] != -100).sum()) for b in padded)


def test_length_batches_respect_the_budget():
    lengths = np.random.default_rng(2).integers(1, 200, 500)
    groups = validation.length_batches(lengths, 1000)
    assert sorted(i for g in groups for i in g) == list(range(500))
    for group in groups:
        assert lengths[group[0]] == lengths[group].max()  # longest first: the width of the group
        assert len(group) * lengths[group[0]] <= 1000
    assert validation.length_batches([5000, 3], 1000) == [[0], [1]]  # too long for the budget: alone


def test_packed_and_padded_layouts_give_the_same_metrics():
    """What makes the benchmarks' padded validation (HF reference) and train.py's packed one comparable."""
    torch.manual_seed(0)
    model = PLM(ModelConfig(hidden_size=32, num_attention_heads=2, num_hidden_layers=2, value_embeddings=1))
    model.init_weights()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5 * torch.randn_like(p))  # init_weights zeroes the head: make predictions depend on context
    model.eval()
    sequences = random_sequences(30, seed=3)
    packed = validation.packed_batches(sequences, row_length=256, mask_rate=0.15, seed=1, rows_per_batch=2)
    padded = validation.padded_batches(sequences, mask_rate=0.15, seed=1, batch_tokens=512)
    a, b = (validation.mlm_metrics(model.logits, batches, "cpu", contextlib.nullcontext(), confusion=True)
            for batches in (packed, padded))
    assert a["masked_tokens"] == b["masked_tokens"] == packed.stats["masked_tokens"]
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-5) and a["accuracy"] == pytest.approx(b["accuracy"])
    assert a["confusion"].sum() == a["masked_tokens"]
    assert np.trace(a["confusion"]) == round(a["accuracy"] * a["masked_tokens"])


def test_confusion_counts_true_by_predicted():
    """Row = true token, column = argmax; a logits_fn that always predicts token 5 fills column 5."""
    V = vocab.VOCAB_SIZE
    labels = torch.tensor([[4, 4, 6, -100]])
    batch = {"input_ids": torch.zeros(1, 4, dtype=torch.int64), "labels": labels,
             "seq_ids": torch.zeros(1, 4, dtype=torch.int32)}
    logits = torch.zeros(1, 4, V)
    logits[..., 5] = 1.0
    logits[0, 0, 4] = 2.0  # the first token is predicted right
    got = validation.mlm_metrics(lambda ids, seq: logits, [batch], "cpu", contextlib.nullcontext(), confusion=True)
    expected = np.zeros((V, V), dtype=np.int64)
    expected[4, 4] = expected[4, 5] = expected[6, 5] = 1
    np.testing.assert_array_equal(got["confusion"], expected)
    assert got["accuracy"] == pytest.approx(1 / 3) and got["masked_tokens"] == 3
    with pytest.raises(ValueError, match="33 logits"):
        validation.mlm_metrics(lambda ids, seq: torch.zeros(1, 4, 64), [batch], "cpu", contextlib.nullcontext(),
                               confusion=True)


def test_shard_sequences_splits_every_shard_in_file_order(tmp_path):
    pieces = [vocab.encode_with_specials(s) for s in ("MKV", "AC", "WWWWW")]
    shards.write_shard(tmp_path / "x_test_000000.bin", np.concatenate(pieces[:2]))
    shards.write_shard(tmp_path / "x_test_000001.bin", pieces[2])
    got = validation.shard_sequences(tmp_path, "x", "test")
    assert [p.tolist() for p in got] == [p.tolist() for p in pieces]
    shards.write_shard(tmp_path / "glued_test_000000.bin", np.concatenate([pieces[0][:-1], pieces[1]]))
    with pytest.raises(shards.ShardError, match="glued_test_000000.bin"):
        validation.shard_sequences(tmp_path, "glued", "test")
    with pytest.raises(FileNotFoundError, match="none_test_\\*.bin"):
        validation.shard_sequences(tmp_path, "none", "test")
