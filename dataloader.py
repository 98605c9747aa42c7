"""Training and validation batches from .bin shards. (Being filled in: see issue 3.)"""
import hashlib

import numpy as np

from vocab import CLS, EOS, MASK, PAD


def fixed_mask(tokens: np.ndarray, rate: float, seed: int) -> np.ndarray:
    """The evaluation mask of one sequence: a pure function of (seed, the sequence's tokens, rate).

    Exactly max(1, round(rate · n)) of the n maskable positions (everything but <cls>, <eos>, <pad>) are chosen,
    without replacement, by a generator seeded from the seed and a hash of the tokens. So every model, every
    batch size and every number of ranks scores the same positions. Returns a bool array shaped like `tokens`.
    """
    tokens = np.asarray(tokens, dtype=np.uint8)
    maskable = np.flatnonzero((tokens != CLS) & (tokens != EOS) & (tokens != PAD))
    out = np.zeros(tokens.shape, dtype=bool)
    if maskable.size == 0:
        return out
    digest = hashlib.sha256(tokens.tobytes()).digest()
    rng = np.random.default_rng([seed, int.from_bytes(digest[:8], "little")])
    n_mask = max(1, int(round(rate * maskable.size)))
    out[rng.choice(maskable, size=n_mask, replace=False)] = True
    return out
