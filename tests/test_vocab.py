"""vocab.py against the ESM2 vocabulary written out by hand and a plain-Python encoder."""
import numpy as np
import pytest

import vocab

# Issue 2, item 2, verbatim: these ids are what published shards and ESM2 checkpoints mean.
ESM2_TOKENS = ["<cls>", "<pad>", "<eos>", "<unk>", *"LAGVSERTIDPKQNFYMHWCXBUZO", ".", "-", "<null_1>", "<mask>"]


def reference_encode(sequence: str) -> tuple[list[int], int]:
    """Case-insensitive per-character lookup in ESM2_TOKENS; anything else is <unk> (id 3)."""
    ids = [ESM2_TOKENS.index(c.upper()) if c.isascii() and c.upper() in ESM2_TOKENS else 3 for c in sequence]
    return ids, ids.count(3)


def test_ids_are_exactly_esm2():
    assert list(vocab.TOKENS) == ESM2_TOKENS
    assert vocab.VOCAB_SIZE == 33
    assert (vocab.CLS, vocab.PAD, vocab.EOS, vocab.UNK, vocab.MASK) == (0, 1, 2, 3, 32)
    assert vocab.TOKEN_TO_ID["L"] == 4 and vocab.TOKEN_TO_ID["O"] == 28 and vocab.TOKEN_TO_ID["-"] == 30
    assert [ESM2_TOKENS[i] for i in vocab.STANDARD_AA_IDS] == list("LAGVSERTIDPKQNFYMHWC")


def test_encode_matches_reference_on_every_ascii_character_and_some_unicode():
    rng = np.random.default_rng(0)
    alphabet = [chr(i) for i in range(128)] + ["Ä", "é", "中", "\ufffd"]
    for _ in range(200):
        sequence = "".join(rng.choice(alphabet, size=int(rng.integers(0, 60))))
        ids, n_unknown = vocab.encode(sequence)
        assert ids.dtype == np.uint8
        assert (ids.tolist(), n_unknown) == reference_encode(sequence)


def test_round_trip_residues_and_specials():
    rng = np.random.default_rng(1)
    for _ in range(50):
        sequence = "".join(rng.choice(list(vocab.RESIDUES + ".-"), size=int(rng.integers(1, 300))))
        ids, n_unknown = vocab.encode(sequence)
        assert n_unknown == 0
        assert vocab.decode_residues(ids) == sequence
        assert vocab.decode(vocab.encode_with_specials(sequence)) == "<cls>" + sequence + "<eos>"


def test_case_insensitive():
    upper, lower = vocab.encode("MKTAYIAKQRQISFVKSHFSRQ"), vocab.encode("mktayiakqrqisfvkshfsrq")
    assert upper[0].tolist() == lower[0].tolist() and upper[1] == lower[1] == 0
    assert vocab.encode("xbuzo")[0].tolist() == [24, 25, 26, 27, 28]


def test_unknown_characters_counted():
    ids, n_unknown = vocab.encode("AJ*1 C")  # J, *, 1 and the space are not in the vocabulary
    assert ids.tolist() == [5, 3, 3, 3, 3, 23] and n_unknown == 4
    ids, n_unknown = vocab.encode("AÄC")  # one id per character, not per UTF-8 byte
    assert ids.tolist() == [5, 3, 23] and n_unknown == 1


def test_decode_rejects_ids_outside_the_vocabulary():
    with pytest.raises(ValueError):
        vocab.decode([0, 33])
    with pytest.raises(ValueError):
        vocab.decode_residues([vocab.CLS, 5])
