"""The ESM2 protein vocabulary: 33 tokens with fixed ids, and fast string <-> id conversion.

The ids are the ones of `facebook/esm2_t*` (and of the community's OMGprot50 / UniRef50 shards), so shards
written here, published shards and published ESM2 numbers all mean the same thing. Nothing is downloaded:
the vocabulary is this constant.
"""
import numpy as np

TOKENS = (
    "<cls>", "<pad>", "<eos>", "<unk>",
    "L", "A", "G", "V", "S", "E", "R", "T", "I", "D", "P", "K", "Q", "N", "F", "Y", "M", "H", "W", "C",
    "X", "B", "U", "Z", "O",
    ".", "-", "<null_1>", "<mask>",
)
VOCAB_SIZE = len(TOKENS)  # 33
TOKEN_TO_ID = {tok: i for i, tok in enumerate(TOKENS)}

CLS, PAD, EOS, UNK, MASK = (TOKEN_TO_ID[t] for t in ("<cls>", "<pad>", "<eos>", "<unk>", "<mask>"))
SPECIAL_IDS = (CLS, PAD, EOS, UNK, TOKEN_TO_ID["<null_1>"], MASK)
# Residue letters, ids 4..28. The BERT "random token" corruption draws from the 20 standard amino acids
# (ids 4..23): replacing a residue by a rare X/B/U/Z/O code would teach nothing useful.
RESIDUES = "LAGVSERTIDPKQNFYMHWCXBUZO"
STANDARD_AA_IDS = np.arange(TOKEN_TO_ID["L"], TOKEN_TO_ID["C"] + 1, dtype=np.uint8)

# Byte -> id lookup for encoding; every byte that is not a vocabulary letter maps to <unk>.
_ENCODE_TABLE = np.full(256, UNK, dtype=np.uint8)
for _letter in RESIDUES + ".-":
    _ENCODE_TABLE[ord(_letter)] = TOKEN_TO_ID[_letter]
    _ENCODE_TABLE[ord(_letter.lower())] = TOKEN_TO_ID[_letter]
_DECODE_TABLE = np.array([t if len(t) == 1 else "?" for t in TOKENS])


def encode(sequence: str) -> tuple[np.ndarray, int]:
    """Residues only (no <cls>/<eos>) -> (uint8 ids of shape (L,), number of characters mapped to <unk>).

    Case-insensitive. Any character outside the vocabulary (including non-ASCII) becomes <unk> and is counted.
    """
    raw = np.frombuffer(sequence.encode("utf-8", errors="replace"), dtype=np.uint8)
    if raw.size and raw.max() >= 128:  # multi-byte characters: encode one id per character, not per byte
        ids = np.array([_ENCODE_TABLE[ord(c)] if ord(c) < 128 else UNK for c in sequence], dtype=np.uint8)
    else:
        ids = _ENCODE_TABLE[raw]
    return ids, int(np.count_nonzero(ids == UNK))


def encode_with_specials(sequence: str) -> np.ndarray:
    """`<cls> residues <eos>` as uint8 ids of shape (L + 2,): the per-sequence layout of a shard."""
    ids, _ = encode(sequence)
    out = np.empty(ids.size + 2, dtype=np.uint8)
    out[0], out[1:-1], out[-1] = CLS, ids, EOS
    return out


def decode(ids) -> str:
    """Ids -> string. Residues become their letter; special tokens are written out as `<cls>` etc."""
    ids = np.asarray(ids, dtype=np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= VOCAB_SIZE):
        raise ValueError(f"token id outside the vocabulary 0..{VOCAB_SIZE - 1}")
    return "".join(TOKENS[i] for i in ids.tolist())


def decode_residues(ids) -> str:
    """Residue ids (no specials) -> amino-acid string; raises on a special token."""
    ids = np.asarray(ids, dtype=np.int64)
    if ids.size and ((ids < 4) | (ids > TOKEN_TO_ID["-"])).any():
        raise ValueError("decode_residues got a special token id")
    return "".join(_DECODE_TABLE[ids].tolist())
