"""model.py against independent references: a dense-mask attention written here, hand counts, HF EsmForMaskedLM.

Tiny shapes, fixed seeds, CPU. Two torch.compile calls in the whole file (the FlexAttention helper and one model).
"""
import dataclasses
import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import model as M
from model import PLM, DocumentMask, ModelConfig, attend, esm2_config
from vocab import CLS, EOS, MASK, TOKEN_TO_ID, VOCAB_SIZE

pytestmark = pytest.mark.usefixtures("one_torch_thread")


TINY = dict(hidden_size=32, num_attention_heads=2, num_hidden_layers=4, value_embeddings=1)


def tiny(**overrides) -> ModelConfig:
    return ModelConfig(**{**TINY, **overrides})


def build(config: ModelConfig, seed: int = 0, perturb: bool = True) -> PLM:
    """A model with every parameter non-trivial (init_weights zeroes the output projections and the head, which
    would make many checks vacuous), unless perturb=False."""
    torch.manual_seed(seed)
    model = PLM(config)
    model.init_weights()
    if perturb:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.3 * torch.randn_like(p))
    return model


def packed_batch(lengths_per_row, T, seed=0, mask_rate=0.15):
    """Rows of real-looking tokens: <cls> residues <eos> per sequence, seq_ids 0,1,..., <pad>/-1 tails."""
    g = torch.Generator().manual_seed(seed)
    R = len(lengths_per_row)
    input_ids = torch.full((R, T), 1, dtype=torch.int64)
    seq_ids = torch.full((R, T), -1, dtype=torch.int32)
    for r, lengths in enumerate(lengths_per_row):
        col = 0
        for s, n in enumerate(lengths):
            input_ids[r, col:col + n] = torch.randint(4, 24, (n,), generator=g)
            input_ids[r, col], input_ids[r, col + n - 1] = CLS, EOS
            seq_ids[r, col:col + n] = s
            col += n
        assert col <= T
    scored = (torch.rand(R, T, generator=g) < mask_rate) & (seq_ids >= 0)
    labels = torch.where(scored, input_ids, -100)
    return input_ids.masked_fill(scored, MASK), seq_ids, labels


def dense_reference_attention(q, k, v, seq_ids, cap=0.0):
    """Plain attention with an explicit (R, T, T) mask: the definition the two fast paths must reproduce."""
    R, T, H, D = q.shape
    scores = torch.einsum("rqhd,rkhd->rhqk", q, k) / math.sqrt(D)
    if cap > 0:
        scores = cap * torch.tanh(scores / cap)
    allowed = (seq_ids[:, :, None] == seq_ids[:, None, :]) & (seq_ids[:, :, None] >= 0)
    probs = torch.softmax(scores.masked_fill(~allowed[:, None], float("-inf")), dim=-1).nan_to_num(0.0)
    return torch.einsum("rhqk,rkhd->rqhd", probs, v)


# Two rows: sequences of 5, 70 (two buckets in the SDPA path), 1 token, and padding; a full row of 40 + 44.
ATTN_LENGTHS, ATTN_T = [[5, 70, 1], [40, 44]], 96


def attention_inputs(seed=0, H=2, D=16):
    g = torch.Generator().manual_seed(seed)
    _, seq_ids, _ = packed_batch(ATTN_LENGTHS, ATTN_T, seed=seed)
    q, k, v = (torch.randn(len(ATTN_LENGTHS), ATTN_T, H, D, generator=g) for _ in range(3))
    return q, k, v, seq_ids


# ---------------------------------------------------------------------------------------------------------------
# Attention paths against the dense reference


@pytest.mark.parametrize("cap", [0.0, 2.0])
def test_sdpa_path_matches_dense_reference_forward_and_backward(cap):
    q, k, v, seq_ids = attention_inputs()
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    got = attend(q, k, v, DocumentMask(seq_ids, "sdpa"), cap)
    want = dense_reference_attention(q, k, v, seq_ids, cap)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert (got[seq_ids < 0] == 0).all()  # padding queries: zeros, not NaN
    g = torch.randn_like(got)
    grads_got = torch.autograd.grad(got, (q, k, v), g)
    grads_want = torch.autograd.grad(want, (q, k, v), g)
    for a, b in zip(grads_got, grads_want):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_soft_cap_changes_attention():
    """Guards the test above against a cap that is silently ignored."""
    q, k, v, seq_ids = attention_inputs()
    q = 4 * q  # scores large enough for a cap of 2 to matter
    capped = attend(q, k, v, DocumentMask(seq_ids, "sdpa"), 2.0)
    plain = attend(q, k, v, DocumentMask(seq_ids, "sdpa"), 0.0)
    assert (capped - plain).abs().max() > 1e-2


def test_flex_path_matches_dense_reference():
    """Compiled FlexAttention forward on CPU (its backward is GPU-only), soft cap on; the plain case is covered by
    test_compiled_flex_model_matches_eager_sdpa_model."""
    q, k, v, seq_ids = attention_inputs(seed=1)
    got = attend(q, k, v, DocumentMask(seq_ids, "flex"), 2.0)
    torch.testing.assert_close(got, dense_reference_attention(q, k, v, seq_ids, 2.0), atol=1e-5, rtol=1e-5)


def test_sequence_positions_restart_at_each_sequence():
    seq_ids = torch.tensor([[0, 0, 0, 1, 1, 2, -1, -1]], dtype=torch.int32)
    assert M.sequence_positions(seq_ids).tolist() == [[0, 1, 2, 0, 1, 0, 0, 1]]


# ---------------------------------------------------------------------------------------------------------------
# Whole-model invariances

ALL_ON = dict(unet=True, x0_mix=True, value_embeddings=2, attention_soft_cap=3.0, soft_logit_cap=10.0,
              token_dropout=True)


@pytest.mark.parametrize("config", [tiny(**ALL_ON), tiny(**ALL_ON, num_hidden_layers=5), esm2_config(32, 2, 3)],
                         ids=["speedrun", "speedrun-odd", "esm2"])
def test_packing_invariance(config):
    """A sequence's logits are the same alone in a row and packed between others (positions restart, no cross-talk,
    token dropout per sequence)."""
    model = build(config)
    ids, seq, _ = packed_batch([[9, 23, 12]], 50, seed=3, mask_rate=0.3)
    a, b = 9, 9 + 23  # the middle sequence
    alone_ids, alone_seq = ids[:, a:b].clone(), torch.zeros(1, b - a, dtype=torch.int32)
    with torch.no_grad():
        packed = model.logits(ids, seq)[0, a:b]
        alone = model.logits(alone_ids, alone_seq)[0]
        # The model really does depend on context: a different neighbour changes nothing, a changed residue does.
        changed = alone_ids.clone()
        changed[0, 3] = 4 if changed[0, 3] != 4 else 5
        other = model.logits(changed, alone_seq)[0]
    torch.testing.assert_close(packed, alone, atol=2e-5, rtol=2e-5)
    assert (other - alone).abs().max() > 1e-3


def test_padding_never_influences_real_tokens():
    model = build(tiny(**ALL_ON))
    ids, seq, labels = packed_batch([[20, 10]], 30, seed=4)
    padded_ids = torch.cat([ids, torch.randint(0, VOCAB_SIZE, (1, 25))], dim=1)  # garbage ids under padding
    padded_seq = torch.cat([seq, torch.full((1, 25), -1, dtype=torch.int32)], dim=1)
    with torch.no_grad():
        short, long = model.logits(ids, seq), model.logits(padded_ids, padded_seq)
    torch.testing.assert_close(long[:, :30], short, atol=2e-5, rtol=2e-5)
    assert torch.isfinite(long).all()
    loss_short, n_short = model(ids, seq, labels)
    loss_long, n_long = model(padded_ids, padded_seq, torch.cat([labels, torch.full((1, 25), -100)], dim=1))
    torch.testing.assert_close(loss_long, loss_short)
    assert n_long == n_short == (labels != -100).sum()


def test_token_dropout_matches_per_sequence_hf_formula():
    """Packed rows get the scale each sequence would get alone in HF EsmEmbeddings:
    (1 - 0.15·0.8) / (1 - masked/length), with <mask> embeddings zeroed."""
    ids, seq, _ = packed_batch([[10, 20, 5]], 40, seed=5, mask_rate=0.35)
    x = torch.randn(1, 40, 8)
    got = M.token_dropout(x, ids, seq)
    want = torch.zeros_like(x)
    for s in range(3):
        cols = (seq[0] == s).nonzero().squeeze(1)
        ratio = (ids[0, cols] == MASK).float().mean()
        want[0, cols] = x[0, cols] * (ids[0, cols] != MASK)[:, None] * (1 - 0.12) / (1 - ratio)
    torch.testing.assert_close(got[seq >= 0], want[seq >= 0])
    assert (ids == MASK).any()


# ---------------------------------------------------------------------------------------------------------------
# Options: every switch builds, trains and matters

OPTION_CONFIGS = {
    "defaults-tiny": tiny(),
    "no-unet": tiny(unet=False),
    "no-x0": tiny(x0_mix=False),
    "no-value-emb": tiny(value_embeddings=0),
    "value-emb-all-layers": tiny(value_embeddings=2),
    "attn-cap": tiny(attention_soft_cap=2.0),
    "no-logit-cap": tiny(soft_logit_cap=0.0),
    "tied": tiny(tie_embeddings=True),
    "token-dropout": tiny(token_dropout=True),
    "odd-layers": tiny(num_hidden_layers=3),
    "esm2": esm2_config(32, 2, 2),
    "esm2-no-token-dropout": esm2_config(32, 2, 2, token_dropout=False),
}


@pytest.mark.parametrize("name", list(OPTION_CONFIGS))
def test_every_option_builds_and_trains(name):
    """From init_weights: a few AdamW steps on one batch lower the loss, and every parameter gets a finite,
    non-zero gradient at some step (zero-initialised projections get theirs once the head has moved)."""
    torch.manual_seed(0)
    model = PLM(OPTION_CONFIGS[name])
    model.init_weights()
    ids, seq, labels = packed_batch([[12, 20], [30]], 32, seed=6, mask_rate=0.3)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-2, weight_decay=0.0)
    touched, losses = set(), []
    for _ in range(4):
        loss_sum, n = model(ids, seq, labels)
        loss = loss_sum / n
        opt.zero_grad()
        loss.backward()
        for pname, p in model.named_parameters():
            assert torch.isfinite(p.grad).all(), pname
            if p.grad.abs().sum() > 0:
                touched.add(pname)
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.05, losses
    assert touched == {pname for pname, _ in model.named_parameters()}


def test_options_change_the_function():
    """Each option, switched on a fixed set of weights, changes the logits (no silently ignored option)."""
    base = build(tiny(value_embeddings=0, unet=False, x0_mix=False, soft_logit_cap=0.0))
    ids, seq, _ = packed_batch([[12, 20], [30]], 32, seed=7)
    with torch.no_grad():
        ref = base.logits(ids, seq)
        for change in [dict(attention_soft_cap=1.0), dict(soft_logit_cap=3.0), dict(token_dropout=True)]:
            other = PLM(dataclasses.replace(base.config, **change))
            other.load_state_dict(base.state_dict())
            other.eval()
            diff = (other.logits(ids, seq) - ref).abs().max()
            assert diff > 1e-3, change
        # token_dropout on ids with <mask>: the packed batch has some
        assert (ids == MASK).any()


def test_soft_cap_bounds_odd_slope_one_and_off_at_zero():
    z = 20 * torch.randn(50, VOCAB_SIZE, generator=torch.Generator().manual_seed(0))
    s = M.soft_cap(z, 15.0)
    assert s.abs().max() < 15 and (s.abs() <= z.abs()).all()
    torch.testing.assert_close(M.soft_cap(-z, 15.0), -s)
    torch.testing.assert_close(M.soft_cap(torch.tensor([1e-3]), 15.0), torch.tensor([1e-3]), atol=1e-9, rtol=1e-6)
    assert M.soft_cap(z, 0.0) is z  # 0 = off


def test_untrained_loss_is_ln_vocab():
    """Untrained logits are ≈ 0 (head N(0, 0.005) or, in esm2 mode, HF's N(0, 0.02) init): loss ≈ ln(33); a zero
    head gives exactly ln(33), which also checks the cap, the masking of the loss and the count."""
    ids, seq, labels = packed_batch([[40, 30], [64]], 72, seed=8)
    for config, tol in [(tiny(), 0.05), (tiny(tie_embeddings=True), 0.05), (esm2_config(32, 2, 2), 0.1)]:
        torch.manual_seed(0)
        model = PLM(config)
        model.init_weights()
        loss_sum, n = model(ids, seq, labels)
        assert loss_sum.dtype == torch.float32 and n.dtype == torch.int64
        assert n == (labels != -100).sum() > 0
        assert abs(loss_sum.item() / n.item() - math.log(VOCAB_SIZE)) < tol, config.architecture
    torch.nn.init.zeros_(model.head.bias)
    torch.nn.init.zeros_(model.head.norm.weight)  # esm2 head: LayerNorm weight 0 -> decoder input 0 -> logits 0
    loss_sum, n = model(ids, seq, labels)
    assert abs(loss_sum.item() / n.item() - math.log(VOCAB_SIZE)) < 1e-6


def test_init_weights_uses_the_current_generator():
    a, b = PLM(tiny()), PLM(tiny())
    torch.manual_seed(3)
    a.init_weights()
    torch.manual_seed(3)
    b.init_weights()
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), name
    torch.manual_seed(4)
    b.init_weights()
    assert not torch.equal(a.blocks[0].attn.q_weight, b.blocks[0].attn.q_weight)


# ---------------------------------------------------------------------------------------------------------------
# Placement rules, config validation


def test_layer_placement_rules():
    # 5 layers: 0,1 store; 2 (middle) neither; 3 adds 1's output, 4 adds 0's.
    assert [M.unet_skip_source(i, 5) for i in range(5)] == [None, None, None, 1, 0]
    assert [M.stores_unet_skip(i, 5) for i in range(5)] == [True, True, False, False, False]
    # 6 layers, 2 tables: table 0 on layers 0 and 5, table 1 on layers 1 and 4.
    assert [M.value_embedding_table(i, 6, 2) for i in range(6)] == [0, 1, None, None, 1, 0]
    assert [M.value_embedding_table(i, 4, 2) for i in range(4)] == [0, 1, 1, 0]
    assert [M.value_embedding_table(i, 4, 0) for i in range(4)] == [None] * 4


@pytest.mark.parametrize("bad", [dict(architecture="esm2"),  # unet etc. still on
                                 dict(value_embeddings=3), dict(attention_backend="cuda"),
                                 dict(soft_logit_cap=-1.0), dict(num_attention_heads=3),
                                 dict(architecture="gpt")])
def test_config_rejects_bad_combinations(bad):
    with pytest.raises(ValueError):
        tiny(**bad)


def test_from_dict_reads_configs_of_earlier_versions():
    """A saved config round-trips; one saved before sliding_window, rope_base and logit_cap_type were removed loads
    when they hold the values the model computes with, and is refused, naming the key, when they do not."""
    config = tiny(token_dropout=True)
    saved = dataclasses.asdict(config)
    assert ModelConfig.from_dict(saved) == config
    old = {**saved, "sliding_window": 0, "rope_base": 10000.0, "logit_cap_type": "tanh"}
    assert ModelConfig.from_dict(old) == config and "sliding_window" in old  # the caller's dict is not changed
    for key, value in [("sliding_window", 128), ("rope_base", 100.0), ("logit_cap_type", "sigmoid")]:
        with pytest.raises(ValueError, match=f"{key}={value!r}"):
            ModelConfig.from_dict({**old, key: value})
    with pytest.raises(ValueError, match="hidden_sise"):
        ModelConfig.from_dict({**saved, "hidden_sise": 32})


@pytest.mark.parametrize("config", [tiny(**ALL_ON), esm2_config(32, 2, 2)], ids=["speedrun", "esm2"])
def test_bf16_autocast_trains(config, monkeypatch):
    """train.py applies bf16 autocast. CUDA autocast runs norms in fp32 (CPU autocast does not), so rms_norm is made
    to return fp32 here, as on the GPU: the attention inputs must still agree in dtype. Loss close to fp32's."""
    model = build(config)
    ids, seq, labels = packed_batch([[12, 20], [30]], 32, seed=14)
    loss32, n = model(ids, seq, labels)
    plain_norm, plain_attend, dtypes = M.rms_norm, M.attend, set()
    monkeypatch.setattr(M, "rms_norm", lambda x: plain_norm(x.float()))

    def attend_recording_dtypes(q, k, v, *args):  # FlexAttention (the GPU path) rejects mixed dtypes
        dtypes.add((q.dtype, k.dtype, v.dtype))
        return plain_attend(q, k, v, *args)

    monkeypatch.setattr(M, "attend", attend_recording_dtypes)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss16, _ = model(ids, seq, labels)
    loss16.backward()
    assert dtypes == {(torch.bfloat16,) * 3}
    assert loss16.dtype == torch.float32
    assert abs(loss16.item() - loss32.item()) / n.item() < 0.05 * max(1.0, loss32.item() / n.item())
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


# ---------------------------------------------------------------------------------------------------------------
# Compile, HF equivalence


def test_compiled_flex_model_matches_eager_sdpa_model():
    """torch.compile of the whole model with FlexAttention (block mask built inside the graph) vs the eager model
    on the SDPA path: same weights, same logits."""
    config = tiny(num_hidden_layers=1, value_embeddings=0, soft_logit_cap=10.0)  # small graph: compiles faster
    eager = build(config)
    flex = PLM(dataclasses.replace(config, attention_backend="flex"))
    flex.load_state_dict(eager.state_dict())
    ids, seq, _ = packed_batch([[5, 70, 1], [40, 44]], 96, seed=9)
    with torch.no_grad():
        want = eager.logits(ids, seq)
        got = torch.compile(flex.logits, dynamic=False)(ids, seq)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def esm2_from_hf(hf, config: ModelConfig) -> PLM:
    """Our esm2-mode model holding the weights of an HF EsmForMaskedLM (name mapping only, no maths)."""
    sd = hf.state_dict()
    names = {"token_embedding.weight": "esm.embeddings.word_embeddings.weight",
             "head.decoder_weight": "esm.embeddings.word_embeddings.weight",
             "final_norm.weight": "esm.encoder.emb_layer_norm_after.weight",
             "final_norm.bias": "esm.encoder.emb_layer_norm_after.bias",
             "head.dense_weight": "lm_head.dense.weight", "head.dense_bias": "lm_head.dense.bias",
             "head.norm.weight": "lm_head.layer_norm.weight", "head.norm.bias": "lm_head.layer_norm.bias",
             "head.bias": "lm_head.bias"}
    for i in range(config.num_hidden_layers):
        ours, theirs = f"blocks.{i}.", f"esm.encoder.layer.{i}."
        for a, b in [("q", "query"), ("k", "key"), ("v", "value")]:
            names[ours + f"attn.{a}_weight"] = theirs + f"attention.self.{b}.weight"
            names[ours + f"attn.{a}_bias"] = theirs + f"attention.self.{b}.bias"
        for a, b in [("attn.out", "attention.output.dense"), ("mlp.up", "intermediate.dense"),
                     ("mlp.down", "output.dense")]:
            names[ours + a + "_weight"], names[ours + a + "_bias"] = theirs + b + ".weight", theirs + b + ".bias"
        for a, b in [("attn_norm", "attention.LayerNorm"), ("mlp_norm", "LayerNorm")]:
            names[ours + a + ".weight"], names[ours + a + ".bias"] = theirs + b + ".weight", theirs + b + ".bias"
    model = PLM(config)
    model.load_state_dict({k: sd[v] for k, v in names.items()}, strict=True)
    return model.eval()


def test_esm2_mode_is_hf_esm_for_masked_lm():
    """Same weights, same logits as transformers' EsmForMaskedLM (token dropout on, <mask> in the input), also when
    our rows are packed and HF's batch is padded."""
    transformers = pytest.importorskip("transformers")
    D, H, L = 32, 2, 2
    hf_config = transformers.EsmConfig(
        vocab_size=VOCAB_SIZE, hidden_size=D, num_hidden_layers=L, num_attention_heads=H, intermediate_size=4 * D,
        pad_token_id=1, mask_token_id=MASK, position_embedding_type="rotary", token_dropout=True,
        emb_layer_norm_before=False, layer_norm_eps=1e-5, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    hf = transformers.EsmForMaskedLM(hf_config).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.normal_(0.0, 0.2)
    ours = esm2_from_hf(hf, esm2_config(D, H, L))
    ids, seq, _ = packed_batch([[17, 25]], 42, seed=10, mask_rate=0.3)
    a, b = ids[:, :17], ids[:, 17:42]
    hf_ids = torch.full((2, 25), 1)  # HF: padded batch with attention_mask
    hf_ids[0, :17], hf_ids[1] = a[0], b[0]
    with torch.no_grad():
        want = hf(input_ids=hf_ids, attention_mask=(torch.arange(25) < torch.tensor([[17], [25]])).long()).logits
        got = ours.logits(ids, seq)
    torch.testing.assert_close(got[0, :17], want[0, :17], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[0, 17:42], want[1], atol=1e-5, rtol=1e-5)
    assert (ids == MASK).any()


# ---------------------------------------------------------------------------------------------------------------
# Accounting


def hand_count(config: ModelConfig) -> int:
    D, V, L, F_ = config.hidden_size, config.vocab_size, config.num_hidden_layers, config.intermediate_size
    if config.architecture == "esm2":
        block = 4 * (D * D + D) + (D * F_ + F_) + (F_ * D + D) + 2 * 2 * D
        return V * D + L * block + 2 * D + (D * D + D) + 2 * D + V  # embedding, blocks, final LN, head
    block = 4 * D * D + 2 * D * F_ + 2 * config.x0_mix
    ve_layers = 2 * config.value_embeddings
    head = 0 if config.tie_embeddings else D * V
    return (V * D + config.value_embeddings * V * D + L * block + 2 * ve_layers + config.unet * (L // 2) + head)


@pytest.mark.parametrize("config", [tiny(), tiny(tie_embeddings=True, unet=False, x0_mix=False),
                                    tiny(num_hidden_layers=5, value_embeddings=2), esm2_config(32, 2, 2)])
def test_parameter_count_and_groups(config):
    model = PLM(config)
    assert model.num_parameters() == hand_count(config) == sum(p.numel() for p in model.parameters())
    tables = (1 + config.value_embeddings) * config.vocab_size * config.hidden_size
    assert model.num_parameters(non_embedding=True) == hand_count(config) - tables
    groups = model.parameter_groups()
    assert set(groups) == {"hidden", "embed", "value_embed", "head", "scalar"}
    listed = [p for ps in groups.values() for p in ps]
    assert len(listed) == len({id(p) for p in listed}) == len(list(model.parameters()))
    assert {id(p) for p in listed} == {id(p) for p in model.parameters()}
    assert all(p.ndim == 2 for p in groups["hidden"]) and all(p.ndim < 2 for p in groups["scalar"])
    assert len(groups["hidden"]) == 6 * config.num_hidden_layers  # q, k, v, out, up, down
    assert len(groups["value_embed"]) == config.value_embeddings


def test_default_config_parameter_count():
    """The speed-track reference model (< 150M): 24·(4·768² + 2·768·2048) blocks + 7 tables of 33·768 (token +
    6 value embeddings) + 768·33 head + 84 scalars (24·2 x0 λ, 12·2 value-embedding λ, 12 skip weights)."""
    model = PLM(ModelConfig())
    assert model.config.intermediate_size == 2048
    assert model.num_parameters() == 132_323_412 == 24 * (4 * 768**2 + 2 * 768 * 2048) + 8 * 33 * 768 + 84
    assert model.num_parameters() < 150_000_000


def matmul_sdpa(q, k, v, attn_mask=None):
    """F.scaled_dot_product_attention as plain matmuls, which FlopCounterMode sees (the CPU kernel it does not)."""
    scores = (q @ k.transpose(-1, -2) / math.sqrt(q.size(-1))).masked_fill(~attn_mask, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


@pytest.mark.parametrize("config", [tiny(), tiny(attention_soft_cap=1.0), esm2_config(32, 2, 2)])
def test_flops_formula_matches_measured_matmuls(config, monkeypatch):
    """FlopCounterMode counts the matrix multiplies actually executed in forward + backward for one unpadded
    sequence of length S. The formula also counts the embedding as a one-hot matmul (2·V·D forward, 3× for
    training), which a lookup does not execute."""
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", matmul_sdpa)
    model = build(config)
    S = 64  # one bucket, no padding slots
    ids, seq, labels = packed_batch([[S]], S, seed=11, mask_rate=0.3)
    with FlopCounterMode(display=False) as counter:
        loss, _ = model(ids, seq, labels)
        loss.backward()
    measured_per_token = counter.get_total_flops() / S
    embedding = 3 * 2 * config.vocab_size * config.hidden_size
    assert measured_per_token == model.flops_per_token(S) - embedding


def test_flops_formula_hand_count():
    # D=32, F=128, V=33, L=4, S=10: per layer 2·3·32² + 4·10·32 + 2·32² + 4·32·128
    #                                        = 6144 + 1280 + 2048 + 16384 = 25856
    # forward = 2·33·32 + 4·25856 + 2·32·33 = 2112 + 103424 + 2112 = 107648; training = 3× = 322944
    assert tiny().intermediate_size == 128
    assert PLM(tiny()).flops_per_token(10) == 322_944


# ---------------------------------------------------------------------------------------------------------------
# Users' API


def test_hidden_states_layers():
    model = build(tiny(**ALL_ON))
    ids, seq, _ = packed_batch([[12, 20], [30]], 32, seed=12)
    with torch.no_grad():
        x0 = model.hidden_states(ids, seq, layer=0)
        want0 = M.rms_norm(M.token_dropout(model.token_embedding(ids), ids, seq))
        torch.testing.assert_close(x0, want0)
        last = model.hidden_states(ids, seq, layer=model.config.num_hidden_layers)
        final = model.hidden_states(ids, seq)
        torch.testing.assert_close(final, M.rms_norm(last))
        torch.testing.assert_close(model.logits(ids, seq), M.soft_cap(model.head(final), 10.0))
        mid = model.hidden_states(ids, seq, layer=2)
        assert mid.shape == (2, 32, 32) and not torch.allclose(mid, last)
    with pytest.raises(ValueError):
        model.hidden_states(ids, seq, layer=5)


def test_embed_api_shapes_and_batch_independence():
    model = build(tiny(**ALL_ON))
    model.train()
    seqs = ["MKTAYIAKQRQISFVKSHFSRQ", "ACDE", "MVLSPADKTNVKAAWGKVGAHAGEYGAEALERMFLSFPTTKTYFPHF", "GG"]
    per_residue, pooled = model.embed(seqs, max_tokens=60)
    assert model.training  # mode restored
    assert [r.shape for r in per_residue] == [(len(s), 32) for s in seqs]
    assert pooled.shape == (4, 32)
    for r, p in zip(per_residue, pooled):
        torch.testing.assert_close(r.mean(0), p)
    for i, s in enumerate(seqs):  # alone, and with a different batching
        alone, _ = model.embed([s])
        torch.testing.assert_close(alone[0], per_residue[i], atol=1e-5, rtol=1e-5)
    shuffled, _ = model.embed(seqs[::-1], max_tokens=1000)
    for a, b in zip(shuffled[::-1], per_residue):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    # Matches hidden_states on the <cls> residues <eos> row, and layer= reaches hidden_states(layer=)
    ids = torch.tensor([[CLS] + [TOKEN_TO_ID[c] for c in "ACDE"] + [EOS]])
    with torch.no_grad():
        h = model.hidden_states(ids, torch.zeros_like(ids, dtype=torch.int32), layer=1)
    layer1, _ = model.embed(["ACDE"], layer=1)
    torch.testing.assert_close(layer1[0], h[0, 1:-1])
    with pytest.raises(ValueError):
        model.embed(["ACDE", ""])


def test_checkpoint_round_trip(tmp_path):
    from checkpoint import load_model, save_model
    model = build(tiny(tie_embeddings=True, token_dropout=True))
    save_model(model, tmp_path)
    loaded = load_model(tmp_path)
    assert loaded.config == model.config
    ids, seq, _ = packed_batch([[12, 20]], 32, seed=13)
    with torch.no_grad():
        torch.testing.assert_close(loaded.logits(ids, seq), model.logits(ids, seq))
    assert loaded.head.weight is loaded.token_embedding.weight
