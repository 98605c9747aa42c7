"""dataloader.py against independent references: a naive packer, the shard contents, binomial bounds, fixed_mask.

Tiny synthetic shards in tmp_path, fixed seeds, CPU. Multi-rank runs are separate rank indices in one process.
"""
import itertools

import numpy as np
import pytest
import torch

import dataloader as dl
import validation
from shards import HEADER_BYTES, ShardError, write_shard
from vocab import CLS, EOS, MASK, PAD, STANDARD_AA_IDS, encode_with_specials

T = 64            # row_length in these tests
MAX_LEN = 40      # max_length: sequences of up to 60 residues (62 tokens) get cropped
ROWS_PER_STEP = 8


def random_sequences(rng, n, max_residues=60, min_residues=1):
    """n distinct random protein strings of standard amino acids."""
    letters = np.array(list("LAGVSERTIDPKQNFYMHWC"))
    out = set()
    while len(out) < n:
        out.add("".join(rng.choice(letters, rng.integers(min_residues, max_residues + 1))))
    return sorted(out)


def write_split(directory, name, split, shards_of_sequences):
    """One shard per list of protein strings; returns the per-sequence token arrays, shard by shard."""
    encoded = []
    for index, sequences in enumerate(shards_of_sequences):
        tokens = [encode_with_specials(s) for s in sequences]
        write_shard(directory / f"{name}_{split}_{index:06d}.bin", np.concatenate(tokens))
        encoded.append(tokens)
    return encoded


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Three train shards of unequal size (20, 7, 33 sequences), a third of them longer than MAX_LEN."""
    directory = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    sequences = random_sequences(rng, 60)
    shards = [sequences[:20], sequences[20:27], sequences[27:]]
    encoded = write_split(directory, "toy", "train", shards)
    write_split(directory, "toy", "valid", shards)
    return directory, encoded


def data_config(directory, name="toy", masking=None, **fields) -> dl.DataConfig:
    """The test corpus's DataConfig: rows of T tokens, ROWS_PER_STEP rows per step, masking as given."""
    masking = masking or dl.MaskingConfig()
    return dl.DataConfig(**{**dict(data_dir=str(directory), data_name=name, batch_size=ROWS_PER_STEP * T,
                                   row_length=T, max_length=MAX_LEN, num_workers=0, mask_rate=masking.mask_rate,
                                   bert_corruption=masking.bert_corruption, mlm=not masking.masked_diffusion),
                            **fields})


def make_loader(directory, *, world_size=1, grad_accum=1, rank=0, masking=None, name="toy", num_workers=0,
                prefetch_factor=2, start_step=0, seed=7, pin_memory=False):
    config = data_config(directory, name, masking, grad_accum=grad_accum, num_workers=num_workers,
                         prefetch_factor=prefetch_factor)
    return dl.TrainLoader(config, seed=seed, world_size=world_size, rank=rank, start_step=start_step,
                          pin_memory=pin_memory)


def take(loader, n_micro):
    """The first n_micro items (step, micro_step, batch) of a fresh iteration."""
    out = []
    for item in loader:
        out.append(item)
        if len(out) == n_micro:
            break
    return out


def original_tokens(batch):
    """Undo masking: the label where a position is scored, else the input. (R, T) uint8 numpy, like a shard."""
    labels, inputs = batch["labels"].numpy(), batch["input_ids"].numpy()
    return np.where(labels != dl.IGNORE, labels, inputs).astype(np.uint8)


def row_segments(tokens, seq_ids):
    """The pieces of one row in order, checking the layout: seq_ids 0, 1, … in contiguous runs, then -1 padding."""
    real = seq_ids >= 0
    n_real = int(real.sum())
    assert real[:n_real].all() and (tokens[n_real:] == PAD).all(), "padding only at the row's tail"
    ids = seq_ids[:n_real]
    assert ids[0] == 0 and np.all(np.diff(ids) >= 0) and np.all(np.diff(ids) <= 1), "contiguous pieces"
    return [tokens[:n_real][ids == k] for k in range(int(ids[-1]) + 1)]


# ---------------------------------------------------------------------------------------------------------------
# Packing
# ---------------------------------------------------------------------------------------------------------------

def naive_pack(lengths, fill, row_length):
    """Reference next-fit packing, one piece at a time."""
    row, offsets, rows = 0, [], []
    for length in lengths:
        if fill + length > row_length:
            row, fill = row + 1, 0
        rows.append(row)
        offsets.append(fill)
        fill += length
    return rows, offsets, fill


def test_pack_greedy_matches_naive_reference():
    rng = np.random.default_rng(1)
    for trial in range(300):
        row_length = int(rng.integers(1, 50))
        lengths = rng.integers(1, row_length + 1, int(rng.integers(1, 40)))
        fill = int(rng.integers(0, row_length + 1))
        row, offset, fill_after = dl.pack_greedy(lengths, fill, row_length)
        ref_row, ref_offset, ref_fill = naive_pack(lengths.tolist(), fill, row_length)
        assert row.tolist() == ref_row and offset.tolist() == ref_offset and fill_after == ref_fill, trial


def test_pack_greedy_rejects_piece_longer_than_row():
    with pytest.raises(ValueError, match="cannot fit"):
        dl.pack_greedy(np.array([3, 9]), 0, 8)


def test_scan_sequences_finds_every_sequence(tmp_path):
    sequences = random_sequences(np.random.default_rng(2), 25, min_residues=0)
    tokens = [encode_with_specials(s) for s in sequences]
    body = np.concatenate(tokens)
    starts, lengths = dl.scan_sequences(body, "x.bin")
    assert [body[a:a + n].tobytes() for a, n in zip(starts, lengths)] == [t.tobytes() for t in tokens]


def test_stream_reproduces_every_sequence_once_per_epoch(corpus):
    """Decoded rows vs the shard contents over 3 epochs: whole, separated, once per epoch, greedy, reshuffled."""
    directory, encoded = corpus
    whole = {t.tobytes(): (shard, i) for shard, tokens in enumerate(encoded) for i, t in enumerate(tokens)}
    long_ones = [(key, np.frombuffer(key, np.uint8)) for key in whole if len(key) > MAX_LEN]
    n_sequences = len(whole)
    loader = make_loader(directory)
    batches = [batch for _, _, batch in take(loader, 20)]

    rows = [(tokens, seq_ids) for b in batches for tokens, seq_ids in zip(original_tokens(b), b["seq_ids"].numpy())]
    pieces_by_row = [row_segments(tokens, seq_ids) for tokens, seq_ids in rows]
    stream, windows = [], 0
    for pieces in pieces_by_row:
        for piece in pieces:
            if piece.tobytes() in whole:
                stream.append(piece.tobytes())
                continue
            # Not a whole sequence: must be a MAX_LEN window of exactly one long sequence.
            assert piece.size == MAX_LEN
            owners = [key for key, seq in long_ones
                      if any(np.array_equal(seq[s:s + MAX_LEN], piece) for s in range(seq.size - MAX_LEN + 1))]
            assert len(owners) == 1
            stream.append(owners[0])
            windows += 1
    # Greedy and nothing dropped at shard or epoch ends: a row is closed only when its next piece cannot fit.
    for this, following in zip(pieces_by_row, pieces_by_row[1:]):
        assert sum(p.size for p in this) + following[0].size > T
    n_epochs = len(stream) // n_sequences
    assert n_epochs >= 3, "the test should cover three whole epochs"
    epochs = [stream[e * n_sequences:(e + 1) * n_sequences] for e in range(n_epochs)]
    for epoch in epochs:
        assert sorted(epoch) == sorted(whole)           # every sequence exactly once per epoch
    assert len(set(map(tuple, epochs))) == n_epochs     # each epoch is reshuffled
    shard_visits = [tuple(k for k, _ in itertools.groupby(whole[key][0] for key in epoch)) for epoch in epochs]
    assert all(sorted(visits) == [0, 1, 2] for visits in shard_visits)  # one shard after the other
    assert len(set(shard_visits)) > 1                   # and the shard order changes between epochs too
    assert windows == loader.stats()["cropped"] > 0
    assert sum(len(key) > MAX_LEN for key in stream[:n_sequences]) == len(long_ones)
    # Rows mix shards: packing carries across shard boundaries instead of padding or dropping.
    shards_per_row = [{whole[key][0] for key in stream_part} for stream_part in _split_by_rows(stream, pieces_by_row)]
    assert any(len(s) > 1 for s in shards_per_row)
    stats = loader.stats()
    assert stats["sequences"] == len(stream)
    assert stats["real_tokens"] == sum(p.size for pieces in pieces_by_row for p in pieces)
    assert stats["real_tokens"] + stats["padding_tokens"] == len(rows) * T
    assert stats["epoch"] == (len(stream) - 1) // n_sequences


def _split_by_rows(stream, pieces_by_row):
    out, i = [], 0
    for pieces in pieces_by_row:
        out.append(stream[i:i + len(pieces)])
        i += len(pieces)
    return out


def test_crop_windows_are_random_and_within_the_sequence():
    lengths = np.array([10, 100, 41, 40, 300])
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    seen = set()
    for epoch in range(5):
        pieces = dl.visit_pieces(seed=3, epoch=epoch, shard=0, starts=starts, lengths=lengths, max_length=40)
        assert int(pieces.cropped.sum()) == 3
        for start, length, cropped in zip(pieces.start, pieces.length, pieces.cropped):
            source = int(np.searchsorted(starts, start, side="right")) - 1
            assert cropped == (lengths[source] > 40)
            assert length == min(lengths[source], 40)
            assert start + length <= starts[source] + lengths[source]
            if not cropped:
                assert start == starts[source]
            elif lengths[source] == 300:
                seen.add(int(start - starts[source]))
    assert len(seen) > 1, "the window of a long sequence moves between epochs"


# ---------------------------------------------------------------------------------------------------------------
# The global batch is a function of (seed, step) only
# ---------------------------------------------------------------------------------------------------------------

def global_batches(directory, world_size, grad_accum, n_steps, masking):
    """Per step, the sorted multiset of rows (input_ids, labels, seq_ids bytes) over all ranks and micro-steps."""
    steps = [[] for _ in range(n_steps)]
    for rank in range(world_size):
        loader = make_loader(directory, world_size=world_size, grad_accum=grad_accum, rank=rank, masking=masking)
        for step, micro_step, batch in take(loader, n_steps * grad_accum):
            assert batch["input_ids"].shape == (ROWS_PER_STEP // (world_size * grad_accum), T)
            steps[step] += [tuple(batch[key][r].numpy().tobytes() for key in ("input_ids", "labels", "seq_ids"))
                            for r in range(batch["input_ids"].shape[0])]
    return [sorted(rows) for rows in steps]


@pytest.mark.parametrize("masking", [
    dl.MaskingConfig(mask_rate=0.3, bert_corruption=True),
    dl.MaskingConfig(masked_diffusion=True),
])
def test_global_batch_is_the_same_for_any_world_size_and_accumulation(corpus, masking):
    directory, _ = corpus
    n_steps = 6  # about 1.5 epochs of this corpus
    reference = global_batches(directory, 1, 4, n_steps, masking)
    assert global_batches(directory, 2, 2, n_steps, masking) == reference
    assert global_batches(directory, 4, 1, n_steps, masking) == reference
    assert all(len(rows) == ROWS_PER_STEP for rows in reference)
    assert len({row for rows in reference for row in rows}) == n_steps * ROWS_PER_STEP  # steps do not repeat rows


def test_every_rank_has_work_with_a_single_shard(tmp_path):
    write_split(tmp_path, "one", "train", [random_sequences(np.random.default_rng(4), 5)])
    for rank in range(8):
        loader = make_loader(tmp_path, name="one", world_size=8, rank=rank)
        (_, _, batch), = take(loader, 1)
        assert (batch["seq_ids"] >= 0).any()


# ---------------------------------------------------------------------------------------------------------------
# Masking
# ---------------------------------------------------------------------------------------------------------------

def synthetic_rows(rng, n_rows, row_length, n_sequences_per_row):
    """Rows of <cls> standard-AA <eos> sequences with a <pad> tail: (tokens uint8, seq_ids int32), both (R, T)."""
    tokens = np.full((n_rows, row_length), PAD, dtype=np.uint8)
    seq_ids = np.full((n_rows, row_length), -1, dtype=np.int32)
    per = (row_length - 16) // n_sequences_per_row
    for r in range(n_rows):
        for k in range(n_sequences_per_row):
            span = slice(k * per, (k + 1) * per)
            tokens[r, span] = rng.choice(STANDARD_AA_IDS, per)
            tokens[r, k * per], tokens[r, (k + 1) * per - 1] = CLS, EOS
            seq_ids[r, span] = k
    return tokens, seq_ids


def within(observed, n, p, sigmas=5.0):
    """observed successes out of n agree with probability p (normal approximation of the binomial)."""
    return abs(observed - n * p) <= sigmas * np.sqrt(n * p * (1 - p))


def test_bert_masking_rate_and_80_10_10_proportions():
    tokens, seq_ids = synthetic_rows(np.random.default_rng(5), 200, 1024, 4)
    rate = 0.2
    inputs, labels = dl.mask_rows(tokens, seq_ids, 0, 11, rate, dl.MaskingConfig(mask_rate=rate,
                                                                                   bert_corruption=True))
    maskable = (tokens != CLS) & (tokens != EOS) & (tokens != PAD)
    selected = labels != dl.IGNORE
    assert not (selected & ~maskable).any(), "never <cls>, <eos> or <pad>"
    assert (labels[selected] == tokens[selected]).all()
    assert (inputs[~selected] == tokens[~selected]).all()
    n_sel = int(selected.sum())
    assert within(n_sel, int(maskable.sum()), rate)
    masked = inputs[selected] == MASK
    unchanged = inputs[selected] == tokens[selected]
    replaced = ~masked & ~unchanged
    # The random 10% draws one of 20 amino acids, so 1/20 of it happens to equal the original.
    assert within(int(masked.sum()), n_sel, 0.8)
    assert within(int(replaced.sum()), n_sel, 0.1 * 19 / 20)
    assert within(int(unchanged.sum()), n_sel, 0.1 + 0.1 / 20)
    replacements = inputs[selected][replaced]
    assert np.isin(replacements, STANDARD_AA_IDS).all()
    counts = np.bincount(replacements, minlength=int(STANDARD_AA_IDS.max()) + 1)[STANDARD_AA_IDS]
    expected = replacements.size / 20
    assert ((counts - expected) ** 2 / expected).sum() < 60, "replacements roughly uniform (chi2, 19 dof)"


def test_plain_masking_uses_only_mask_token():
    tokens, seq_ids = synthetic_rows(np.random.default_rng(6), 50, 512, 3)
    inputs, labels = dl.mask_rows(tokens, seq_ids, 0, 1, 0.15, dl.MaskingConfig(mask_rate=0.15))
    selected = labels != dl.IGNORE
    assert (inputs[selected] == MASK).all() and (inputs[~selected] == tokens[~selected]).all()
    maskable = (tokens != CLS) & (tokens != EOS) & (tokens != PAD)
    assert within(int(selected.sum()), int(maskable.sum()), 0.15)


def test_masked_diffusion_draws_a_rate_per_sequence():
    tokens, seq_ids = synthetic_rows(np.random.default_rng(7), 100, 4096 + 16, 4)  # 400 sequences of 1024
    rate = 0.8
    _, labels = dl.mask_rows(tokens, seq_ids, 0, 2, rate, dl.MaskingConfig(mask_rate=rate, masked_diffusion=True))
    fractions = []
    for r in range(tokens.shape[0]):
        for k in range(4):
            in_seq = (seq_ids[r] == k) & (tokens[r] != CLS) & (tokens[r] != EOS)
            fractions.append((labels[r][in_seq] != dl.IGNORE).mean() / rate)
    # t = fraction / rate should be ~ U(1e-3, 1): check quantiles (binomial noise per sequence is ~0.015).
    quantiles = np.quantile(fractions, [0.1, 0.5, 0.9])
    assert np.allclose(quantiles, [0.1, 0.5, 0.9], atol=0.08), quantiles
    assert min(fractions) >= 0 and max(fractions) <= 1 / rate


def test_data_config_rejects_contradictions_naming_the_key(tmp_path):
    with pytest.raises(ValueError, match="^mask_rate:"):
        dl.MaskingConfig(mask_rate=0.0)
    with pytest.raises(ValueError, match="^bert_corruption:"):
        dl.DataConfig(bert_corruption=True, mlm=False)
    for fields, key in ((dict(batch_size=1000, row_length=512), "batch_size"), (dict(max_length=600, row_length=512, batch_size=512), "max_length"),
                        (dict(val_mask_rate=0.0), "val_mask_rate"), (dict(num_workers=-1), "num_workers"),
                        (dict(grad_accum=0), "grad_accum")):
        with pytest.raises(ValueError, match=f"^{key}:"):
            dl.DataConfig(**fields)
    config = dl.DataConfig(batch_size=8 * 512, row_length=512, max_length=512, grad_accum=2)
    assert config.rows_per_micro(2) == 2 and config.rows_per_micro(4) == 1
    with pytest.raises(ValueError, match="^batch_size:.*world size 8 × grad_accum 2"):
        config.rows_per_micro(8)
    assert dl.DataConfig(mlm=False).masking == dl.MaskingConfig(mask_rate=0.2, masked_diffusion=True)


def test_masks_differ_across_ranks_workers_and_micro_steps(tmp_path):
    """Identical sequences make every row's content identical, so only the mask streams can differ."""
    same = ["ACDEFGHIKLMNPQRSTVWY" * 1] * 40
    write_split(tmp_path, "same", "train", [same, same])
    loaders = {rank: make_loader(tmp_path, name="same", world_size=2, grad_accum=2, rank=rank, num_workers=2)
               for rank in range(2)}
    items = {rank: take(loader, 4) for rank, loader in loaders.items()}  # workers 0, 1, 0, 1 of each rank
    batches = [batch for rank in range(2) for _, _, batch in items[rank]]
    contents = {original_tokens(b).tobytes() for b in batches}
    assert len(contents) == 1, "the rows hold the same tokens"
    masks = [(b["labels"] != dl.IGNORE).numpy().tobytes() for b in batches]
    assert len(set(masks)) == len(masks), "every (rank, worker, micro-step) has its own mask"


def test_mask_rate_inside_worker_processes(corpus):
    directory, _ = corpus
    loader = make_loader(directory, grad_accum=2, masking=dl.MaskingConfig(mask_rate=0.5), num_workers=2)
    for (step, _, batch), _ in zip(loader, range(12)):
        tokens = original_tokens(batch)
        maskable = (batch["seq_ids"].numpy() >= 0) & (tokens != CLS) & (tokens != EOS)
        assert within(int((batch["labels"] != dl.IGNORE).sum()), int(maskable.sum()), 0.5)


# ---------------------------------------------------------------------------------------------------------------
# Workers and resume
# ---------------------------------------------------------------------------------------------------------------

def assert_same_items(a, b):
    assert len(a) == len(b)
    for (step_a, micro_a, batch_a), (step_b, micro_b, batch_b) in zip(a, b):
        assert (step_a, micro_a) == (step_b, micro_b)
        for key in ("input_ids", "labels", "seq_ids"):
            assert batch_a[key].dtype == batch_b[key].dtype and torch.equal(batch_a[key], batch_b[key])


def test_zero_and_two_workers_give_the_same_stream(corpus):
    directory, _ = corpus
    masking = dl.MaskingConfig(bert_corruption=True)
    kwargs = dict(world_size=2, grad_accum=2, rank=1, masking=masking)
    assert_same_items(take(make_loader(directory, num_workers=0, **kwargs), 10),
                      take(make_loader(directory, num_workers=2, prefetch_factor=3, **kwargs), 10))


def test_resume_reproduces_the_stream_exactly(corpus):
    directory, _ = corpus
    masking = dl.MaskingConfig(mask_rate=0.1)
    full = take(make_loader(directory, grad_accum=2, masking=masking, num_workers=2), 16)  # ~2 epochs
    interrupted = make_loader(directory, grad_accum=2, masking=masking, num_workers=2)
    take(interrupted, 10)
    state = interrupted.state_dict()
    assert state["next_step"] == 5
    resumed = make_loader(directory, grad_accum=2, masking=masking, num_workers=1)
    resumed.load_state_dict(state)
    assert_same_items(take(resumed, 6), full[10:])
    assert_same_items(take(make_loader(directory, grad_accum=2, masking=masking, start_step=5), 6), full[10:])
    # The same loader restarts where it was told, recreating its workers.
    interrupted.load_state_dict({**state, "next_step": 2})
    assert_same_items(take(interrupted, 4), full[4:8])


def test_resume_checks_the_stream_identity(corpus):
    directory, _ = corpus
    loader = make_loader(directory, grad_accum=2)
    take(loader, 1)
    with pytest.raises(RuntimeError, match="middle of step 0"):
        loader.state_dict()
    other_seed = make_loader(directory, seed=8)
    with pytest.raises(ValueError, match="'seed'"):
        loader.load_state_dict(other_seed.state_dict())
    # World size and accumulation may change on resume: the global batch does not depend on them.
    make_loader(directory, world_size=2, grad_accum=4).load_state_dict(make_loader(directory).state_dict())


# ---------------------------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------------------------

def validation_rows(directory, world_size, rank, rows_per_batch=3):
    return validation.load_validation_batches(directory, "toy", "valid", row_length=T, max_length=MAX_LEN,
                                      world_size=world_size, rank=rank, rows_per_batch=rows_per_batch)


def test_validation_uses_fixed_masks_and_every_sequence_in_file_order(corpus):
    directory, encoded = corpus
    batches = validation_rows(directory, 1, 0)
    again = validation_rows(directory, 1, 0)
    for a, b in zip(batches, again, strict=True):
        assert all(torch.equal(a[key], b[key]) for key in a)
    sequences = [t for tokens in encoded for t in tokens]
    pieces = [(p, labels) for b in batches
              for tokens, labels, seq_ids in zip(original_tokens(b), b["labels"].numpy(), b["seq_ids"].numpy())
              if (seq_ids >= 0).any()
              for p, labels in zip(row_segments(tokens, seq_ids), _label_segments(labels, seq_ids))]
    assert len(pieces) == len(sequences) == batches.stats["sequences"]
    for (piece, labels), sequence in zip(pieces, sequences):
        expected = sequence[:MAX_LEN]
        assert np.array_equal(piece, expected)
        assert np.array_equal(labels != dl.IGNORE, validation.fixed_mask(expected, 0.15, 0))
    assert batches.stats["cropped"] == sum(t.size > MAX_LEN for t in sequences)
    masked = sum(int((b["labels"] != dl.IGNORE).sum()) for b in batches)
    assert masked == batches.stats["masked_tokens"] == batches.stats["rank_masked_tokens"]
    assert all((b["input_ids"][b["labels"] != dl.IGNORE] == MASK).all() for b in batches)


def _label_segments(labels, seq_ids):
    return [labels[seq_ids == k] for k in range(int(seq_ids.max()) + 1)]


def test_validation_union_over_ranks_is_independent_of_world_size(corpus):
    directory, _ = corpus

    def union(world_size):
        rows, masked, n_batches = [], 0, set()
        for rank in range(world_size):
            batches = validation_rows(directory, world_size, rank)
            n_batches.add(len(batches))
            masked += batches.stats["rank_masked_tokens"]
            for b in batches:
                assert b["input_ids"].shape == (3, T)
                rows += [tuple(b[key][r].numpy().tobytes() for key in b)
                         for r in range(3) if (b["seq_ids"][r] >= 0).any()]
        assert len(n_batches) == 1, "every rank runs the same number of batches"
        return sorted(rows), masked

    reference = union(1)
    assert union(2) == reference and union(3) == reference


# ---------------------------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------------------------

def corrupt(path, offset, value, dtype):
    data = bytearray(path.read_bytes())
    data[offset:offset + np.dtype(dtype).itemsize] = np.array([value], dtype=dtype).tobytes()
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage, message", [
    (lambda p: corrupt(p, 0, 12345, "<i4"), "magic number"),
    (lambda p: corrupt(p, 4, 2, "<i4"), "version"),
    (lambda p: p.write_bytes(p.read_bytes()[:-3]), "truncated"),
    (lambda p: corrupt(p, HEADER_BYTES, 5, "u1"), "starts with"),
    (lambda p: corrupt(p, p.stat().st_size - 1, 5, "u1"), "ends with"),
])
def test_corrupt_shard_is_rejected_before_training(tmp_path, damage, message):
    sequences = random_sequences(np.random.default_rng(8), 6)
    write_split(tmp_path, "bad", "train", [sequences[:3], sequences[3:]])
    broken = tmp_path / "bad_train_000001.bin"  # the second shard: every shard is checked, not just the first
    damage(broken)
    with pytest.raises(ShardError, match=message) as error:
        make_loader(tmp_path, name="bad")
    assert str(broken) in str(error.value)


def test_broken_sequence_inside_a_shard_is_named(tmp_path):
    body = np.concatenate([encode_with_specials("ACD"), encode_with_specials("EF")])
    glued = body.copy()
    glued[5] = 4  # the second <cls> becomes a residue: two sequences glued together
    with pytest.raises(ShardError, match="x.bin: token 5"):
        dl.scan_sequences(glued, "x.bin")
    inside = body.copy()
    inside[2] = CLS
    with pytest.raises(ShardError, match="inside a sequence"):
        dl.scan_sequences(inside, "x.bin")
    alien = body.copy()
    alien[2] = 40
    with pytest.raises(ShardError, match="outside the 33-token vocabulary"):
        dl.scan_sequences(alien, "x.bin")
    write_shard(tmp_path / "glued_train_000000.bin", glued)
    with pytest.raises(ShardError, match="glued_train_000000.bin"):
        take(make_loader(tmp_path, name="glued"), 1)  # found in the worker, reported with the file name


def test_missing_shards_name_the_glob(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing_train_\\*.bin"):
        make_loader(tmp_path, name="nothing")
    with pytest.raises(FileNotFoundError, match="nothing_valid_\\*.bin"):
        validation.load_validation_batches(tmp_path, "nothing", "valid", row_length=T, max_length=MAX_LEN)


def test_inconsistent_sizes_are_rejected(corpus):
    directory, _ = corpus
    with pytest.raises(ValueError, match="do not split evenly"):
        dl.TrainLoader(data_config(directory, batch_size=3 * T, grad_accum=2), seed=0)
    with pytest.raises(ValueError, match="exceeds row_length"):
        data_config(directory, max_length=T + 1)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_pinned_batches_reach_the_gpu(corpus):
    directory, _ = corpus
    (_, _, batch), = take(make_loader(directory, num_workers=1, pin_memory=True), 1)
    assert batch["input_ids"].is_pinned()
    on_gpu = dl.to_device(batch, "cuda")
    torch.cuda.synchronize()
    assert all(torch.equal(on_gpu[key].cpu(), batch[key]) for key in batch)
