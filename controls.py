"""No-learning controls for a masked-LM validation loss: the losses a model must beat before it has learned context.

    unigram      p(a): residue frequencies of the train split; knows nothing of the sequence.
    composition  p(a | the sequence's own visible residues) = (c_s(a) + k · p(a)) / (n_s + k); the residue right
                 after <cls> uses the train split's first-residue distribution instead (mostly M).
    ngram        p(a | visible neighbours within ±2): counts of (l2, l1, a, r1, r2) over the train split. A masked
                 or out-of-sequence neighbour is marginalised out (summed over, which is exact for an unknown
                 residue). The ±2 estimate is interpolated with the ±1 one (Dirichlet weight β2), which is
                 interpolated with the unigram (β1).
    ngram+composition  both kinds of evidence multiplied relative to the unigram, p ∝ p_ngram · p_composition /
                 p(a) (naive Bayes), renormalised: the strongest of these, and usually the one to beat.

A validation loss is read as its gap below the best of these ("gain"): a model at the composition control has
learned residue frequencies, not proteins. Every control is scored on exactly the masked positions the model is
scored on (the same fixed-mask rows), and its constants (k, β1, β2) are fitted on held-out *train* sequences masked
the same way, never on the set being scored. Fitting reads at most `max_train_tokens` of the train split in one
pass (counted in the result), so it costs seconds on Swiss-Prot and stays bounded on a 50-billion-token corpus.
"""
from dataclasses import dataclass, field

import numpy as np

from validation import mask_sequence
from vocab import CLS, EOS, MASK, PAD, VOCAB_SIZE

V = VOCAB_SIZE          # centre symbols: the model's output space
WILD = VOCAB_SIZE       # a context symbol that is unknown (masked, or outside the sequence): summed over
A = VOCAB_SIZE + 1      # context alphabet: the vocabulary plus WILD
CONTEXT = 2             # residues of context on each side for the ngram control
IGNORE = -100
NAMES = ("unigram", "composition", "ngram", "ngram+composition")
GRID = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0)  # candidates for k, β1, β2
FIT_SEQUENCES = 1000    # held-out train sequences (the first ones read, at most a tenth) that fit the constants
FIT_MASK_SEED = 7919    # their masks: fixed_mask with this seed, never the validation's own


def _scorable(tokens: np.ndarray) -> np.ndarray:
    """Positions a mask can hit (fixed_mask's rule): not <cls>, <eos>, <pad>."""
    return (tokens != CLS) & (tokens != EOS) & (tokens != PAD)


@dataclass
class ControlModel:
    """Counts from the train split and fitted constants. `counts[l2, l1, a, r1, r2]` with index WILD = the sum."""
    counts: np.ndarray                     # (A, A, V, A, A) float64
    composition_k: float = 50.0            # pseudo-count weight of the unigram in the composition control
    beta1: float = 10.0                    # Dirichlet weight of the unigram behind the ±1 estimate
    beta2: float = 10.0                    # Dirichlet weight of the ±1 estimate behind the ±2 estimate
    train_tokens: int = 0                  # train tokens counted
    fit_masked_tokens: int = 0             # masked tokens of the held-out train sequences the constants were fit on
    fit_losses: dict = field(default_factory=dict)

    @property
    def unigram(self) -> np.ndarray:
        """(V,) residue frequencies, add-half smoothed over the tokens a mask can hit."""
        c = self.counts[WILD, WILD, :, WILD, WILD] + 0.5 * _scorable(np.arange(V))
        return c / c.sum()

    @property
    def first_residue(self) -> np.ndarray:
        """(V,) distribution of the residue right after <cls>, smoothed toward the unigram."""
        c = self.counts[WILD, CLS, :, WILD, WILD]
        return (c + self.unigram) / (c.sum() + 1.0)

    # ---- scoring: log-probabilities of the label at each masked position, per control ------------------------
    def evidence(self, symbols: np.ndarray, labels: np.ndarray, seq_index: np.ndarray) -> dict:
        """What the controls see at each masked position, gathered once (the constants can then vary cheaply).

        symbols: (n,) context symbols (vocabulary ids, WILD where masked or between sequences), with CONTEXT WILD
        entries before the first and after the last sequence; labels: (n,) the true id at masked positions,
        IGNORE elsewhere; seq_index: (n,) the sequence of each position."""
        pos = np.flatnonzero(labels != IGNORE)
        visible = (symbols < V) & _scorable(symbols) & (symbols != MASK)  # the masked residue itself is not
        n_seq = int(seq_index.max()) + 1 if seq_index.size else 0
        comp = np.zeros((n_seq, V))
        np.add.at(comp, (seq_index[visible], symbols[visible]), 1.0)
        l2, l1, r1, r2 = (symbols[pos + d] for d in (-2, -1, 1, 2))
        return {"y": labels[pos], "composition": comp[seq_index[pos]], "first": l1 == CLS,
                "c1": self.counts[WILD, l1, :, r1, WILD], "c2": self.counts[l2, l1, :, r1, r2]}  # (m, V) each

    def log_probs(self, evidence: dict, composition_k: float | None = None, beta1: float | None = None,
                  beta2: float | None = None) -> dict:
        """{control: (m,) log p(label)} from `evidence`, with the fitted constants unless others are given."""
        k = self.composition_k if composition_k is None else composition_k
        b1 = self.beta1 if beta1 is None else beta1
        b2 = self.beta2 if beta2 is None else beta2
        y, comp, c1, c2 = evidence["y"], evidence["composition"], evidence["c1"], evidence["c2"]
        rows, uni = np.arange(y.size), self.unigram
        p_comp = (comp + k * uni) / (comp.sum(1, keepdims=True) + k)                 # (m, V)
        p_comp = np.where(evidence["first"][:, None], self.first_residue, p_comp)
        p1 = (c1 + b1 * uni) / (c1.sum(1, keepdims=True) + b1)                       # ±1, backed off to unigram
        p2 = (c2 + b2 * p1) / (c2.sum(1, keepdims=True) + b2)                        # ±2, backed off to ±1
        # both kinds of evidence multiplied, each relative to the unigram (naive Bayes), renormalised
        both = np.divide(p2 * p_comp, uni, out=np.zeros_like(p2), where=uni > 0)
        return {"unigram": np.log(uni[y]), "composition": np.log(p_comp[rows, y]), "ngram": np.log(p2[rows, y]),
                "ngram+composition": np.log(both[rows, y] / both.sum(1))}

    def fit(self, symbols: np.ndarray, labels: np.ndarray, seq_index: np.ndarray) -> None:
        """Choose composition_k, beta1 then beta2 on GRID by the loss on held-out train positions."""
        seen = self.evidence(symbols, labels, seq_index)

        def loss(name, **constants):
            return float(-self.log_probs(seen, **constants)[name].mean())
        self.composition_k = min(GRID, key=lambda k: loss("composition", composition_k=k))
        self.beta1 = min(GRID, key=lambda b: loss("ngram", beta1=b, beta2=1e12))  # β2 → ∞: the ±1 model alone
        self.beta2 = min(GRID, key=lambda b: loss("ngram", beta2=b))  # the combination reuses k, β1, β2
        self.fit_masked_tokens = int(seen["y"].size)
        self.fit_losses = {name: loss(name) for name in NAMES}

    def score(self, sequences) -> dict:
        """Sums over masked positions: {control: summed negative log-likelihood (nats), 'masked_tokens': m}.

        sequences: iterable of (input_ids (L,), labels (L,)) per sequence, as the model sees them (<mask> at masked
        positions, labels IGNORE off the mask). Sums, so ranks holding different sequences can be added."""
        logp = self.log_probs(self.evidence(*flatten(sequences)))
        return {name: float(-logp[name].sum()) for name in NAMES} | {"masked_tokens": int(logp["unigram"].size)}


def summarise(sums: dict) -> dict:
    """Summed NLLs -> the controls' losses per masked token, the best control and its name (and the masked-token
    count as an int, whatever number type the sums came in: a cross-rank sum returns floats)."""
    n = max(sums["masked_tokens"], 1)
    losses = {name: sums[name] / n for name in NAMES}
    best = min(NAMES, key=losses.get)
    return losses | {"best": losses[best], "best_name": best, "masked_tokens": int(sums["masked_tokens"])}


def flatten(sequences) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-sequence (input_ids, labels) -> flat (symbols, labels, seq_index) with CONTEXT WILD separators, so no
    context reaches into a neighbouring sequence. Masked inputs become WILD."""
    parts_s, parts_y, parts_i = [np.full(CONTEXT, WILD)], [np.full(CONTEXT, IGNORE)], [np.zeros(CONTEXT, np.int64)]
    for i, (input_ids, labels) in enumerate(sequences):
        ids = np.asarray(input_ids, dtype=np.int64)
        sym = np.where(ids == MASK, WILD, ids)
        parts_s += [sym, np.full(CONTEXT, WILD)]
        parts_y += [np.asarray(labels, dtype=np.int64), np.full(CONTEXT, IGNORE)]
        parts_i += [np.full(ids.size + CONTEXT, i, dtype=np.int64)]
    return np.concatenate(parts_s), np.concatenate(parts_y), np.concatenate(parts_i)


def rows_to_sequences(batches) -> list[tuple[np.ndarray, np.ndarray]]:
    """Packed fixed-mask rows ({input_ids, labels, seq_ids} of (R, T), seq_ids -1 on padding) -> per-sequence
    (input_ids, labels), in row order."""
    out = []
    for batch in batches:
        ids, labels, seq_ids = (np.asarray(batch[key]) for key in ("input_ids", "labels", "seq_ids"))
        for r in range(ids.shape[0]):
            row = seq_ids[r]
            for s in np.unique(row[row >= 0]):
                where = row == s
                out.append((ids[r][where], labels[r][where]))
    return out


def count_contexts(tokens: np.ndarray, chunk: int = 1 << 23) -> np.ndarray:
    """(V, V, V, V, V) counts of (l2, l1, a, r1, r2) over a flat token stream (whole sequences back to back), for
    every centre a mask can hit. Chunked, so memory is bounded by `chunk` whatever the stream length."""
    counts = np.zeros(V ** 5, dtype=np.int64)
    edge = np.full(CONTEXT, PAD, dtype=np.uint8)  # so the first and last tokens are centres too
    tokens = np.concatenate([edge, np.asarray(tokens, dtype=np.uint8), edge])
    n = tokens.size
    for start in range(CONTEXT, n - CONTEXT, chunk):
        stop = min(start + chunk, n - CONTEXT)
        window = np.asarray(tokens[start - CONTEXT: stop + CONTEXT], dtype=np.int64)
        centre = window[CONTEXT:-CONTEXT]
        index = (((window[:-4] * V + window[1:-3]) * V + centre) * V + window[3:-1]) * V + window[4:]
        counts += np.bincount(index[_scorable(centre)], minlength=V ** 5)
    return counts.reshape((V,) * 5)


def with_wildcards(counts: np.ndarray) -> np.ndarray:
    """(V,)*5 counts -> (A, A, V, A, A) float64 where index WILD on a context axis holds the sum over that axis."""
    out = np.zeros((A, A, V, A, A))
    out[:V, :V, :, :V, :V] = counts
    for axis in (0, 1, 3, 4):
        index = [slice(None)] * 5
        index[axis] = WILD
        source = [slice(None)] * 5
        source[axis] = slice(0, V)
        out[tuple(index)] = out[tuple(source)].sum(axis=axis)
    return out


def fit_controls(train_paths, mask_rate: float, max_train_tokens: int = 100_000_000) -> ControlModel:
    """Count the train split (its first FIT_SEQUENCES sequences held out) and fit the constants on the held-out
    sequences under fixed masks at `mask_rate`. Reads at most max_train_tokens tokens, shard by shard."""
    from dataloader import scan_sequences
    from shards import read_shard

    counts = np.zeros((V,) * 5, dtype=np.int64)
    held_out, counted = [], 0
    for path in train_paths:
        if counted >= max_train_tokens:
            break
        tokens = read_shard(path)
        skip = 0
        if len(held_out) < FIT_SEQUENCES:
            starts, lengths = scan_sequences(tokens, path)
            take = min(FIT_SEQUENCES - len(held_out), starts.size // 10)
            held_out += [np.asarray(tokens[s:s + n]) for s, n in zip(starts[:take], lengths[:take])]
            skip = int(starts[take] if take < starts.size else tokens.size)
        stop = min(tokens.size, skip + max_train_tokens - counted)
        counts += count_contexts(tokens[skip:stop])
        counted += stop - skip
    model = ControlModel(counts=with_wildcards(counts), train_tokens=counted)
    if held_out:  # a split too small to hold any out keeps the default constants (fit_masked_tokens stays 0)
        model.fit(*flatten([mask_sequence(tokens, mask_rate, FIT_MASK_SEED) for tokens in held_out]))
    return model


def describe(losses: dict, model: ControlModel | None = None) -> str:
    """One log line: every control's loss, and which is best."""
    parts = " ".join(f"{name}:{losses[name]:.4f}" for name in NAMES)
    text = f"controls (nats per masked token, {losses['masked_tokens']:,} masked tokens): {parts}; best: " \
           f"{losses['best_name']} {losses['best']:.4f}"
    if model is not None:
        text += (f" [fit on {model.train_tokens:,} train tokens; k={model.composition_k:g}, "
                 f"β1={model.beta1:g}, β2={model.beta2:g} chosen on {model.fit_masked_tokens:,} held-out train "
                 f"positions]")
    return text


def residue_frequencies(train_paths, max_tokens: int = 100_000_000) -> np.ndarray:
    """(V,) frequencies of the tokens a mask can hit, over at most max_tokens of the train shards (add-half
    smoothed): the unigram control, without the context counts."""
    from shards import read_shard

    counts, seen = np.zeros(V), 0
    for path in train_paths:
        tokens = np.asarray(read_shard(path)[:max(max_tokens - seen, 0)])
        counts += np.bincount(tokens, minlength=V)[:V]
        seen += tokens.size
    counts = (counts + 0.5) * _scorable(np.arange(V))
    return counts / counts.sum()
