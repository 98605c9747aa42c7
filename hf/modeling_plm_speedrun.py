"""Hugging Face `transformers` classes for a speedrun-architecture encoder exported by `export.py`.

A template: export.py copies this file unchanged into the exported folder, beside a copy of `model.py` and
`vocab.py` (model.py's `from vocab import` made relative, the only change), so the forward pass that
`AutoModelForMaskedLM.from_pretrained(folder, trust_remote_code=True)` runs is model.py's own `PLM`, not a second
implementation. The relative imports below resolve only inside such a folder; tests/test_export.py loads it there.

Inputs are padded batches, as for any HF encoder: `input_ids` (B, T) from the ESM tokenizer and `attention_mask`
(B, T), 1 on real tokens, one sequence per row (left or right padding). The mask becomes model.py's `seq_ids`
(0 on real tokens, -1 on padding), so rotary positions start at the sequence's first real token.

Outputs follow HF's ESM: `hidden_states` has L + 1 entries, [i] being the residual stream after i blocks for
i < L (what `PLM.hidden_states(layer=i)` returns) and [L] the final normed output, equal to `last_hidden_state`
(what the head reads). Logits are the soft-capped fp32 logits that the training loss saw.
"""
import contextlib
import dataclasses

import torch
import torch.nn.functional as F
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput, MaskedLMOutput

from .model import PLM, REMOVED_FIELDS, ModelConfig
from .vocab import CLS, EOS, MASK, PAD

MODEL_FIELDS = tuple(field.name for field in dataclasses.fields(ModelConfig))


class PLMSpeedrunConfig(PretrainedConfig):
    """model.py's `ModelConfig` fields, flat (hidden_size, num_hidden_layers, ... keep their HF meaning), plus the
    ESM token ids. ModelConfig checks its own rules, so a bad value fails here with ModelConfig's message; a field
    removed from ModelConfig is read by `ModelConfig.from_dict` (dropped at its one valid value, refused otherwise)
    rather than kept as an attribute that changes nothing."""

    model_type = "plm_speedrun"

    def __init__(self, **kwargs):
        given = {name: kwargs.pop(name) for name in (*MODEL_FIELDS, *REMOVED_FIELDS) if name in kwargs}
        for name, value in dataclasses.asdict(ModelConfig.from_dict(given)).items():
            setattr(self, name, value)
        for name, token in (("pad_token_id", PAD), ("mask_token_id", MASK), ("bos_token_id", CLS),
                            ("eos_token_id", EOS)):
            kwargs.setdefault(name, token)
        # PLM ties its head to the embedding by sharing one Parameter; transformers must know, to tie them again
        # after loading and to save the shared tensor once (PLMSpeedrunPreTrainedModel._tied_weights_keys).
        if kwargs.setdefault("tie_word_embeddings", self.tie_embeddings) != self.tie_embeddings:
            raise ValueError(f"tie_word_embeddings={kwargs['tie_word_embeddings']} contradicts tie_embeddings="
                             f"{self.tie_embeddings}, which decides whether the head is the embedding")
        super().__init__(**kwargs)

    def model_config(self) -> ModelConfig:
        return ModelConfig(**{name: getattr(self, name) for name in MODEL_FIELDS})


def sequence_ids(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """(B, T) attention_mask -> (B, T) int32 seq_ids: 0 on real tokens, -1 on padding (model.py's packed-row input
    with one sequence per row). A row whose real tokens are not one contiguous run would silently become several
    sequences in model.py, so it is refused."""
    if attention_mask is None:
        return torch.zeros_like(input_ids, dtype=torch.int32)
    if attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}, input_ids {tuple(input_ids.shape)}")
    real = attention_mask.bool()
    runs = real[:, :1].long().sum(1) + (real[:, 1:] & ~real[:, :-1]).long().sum(1)  # starts of real-token runs
    if (runs > 1).any():
        rows = torch.nonzero(runs > 1).flatten().tolist()
        raise ValueError(f"attention_mask rows {rows} hold more than one run of real tokens: each row must be one "
                         "sequence, padded on the left or the right")
    return torch.where(real, 0, -1).to(torch.int32)


@contextlib.contextmanager
def residual_streams(plm: PLM, enabled: bool):
    """Collect the residual stream before block 0 and after every block, in one forward pass: entry i is the stream
    after i blocks, the tensor `PLM.hidden_states(layer=i)` returns (tests/test_export.py compares them)."""
    states = []
    if not enabled:
        yield states
        return
    handles = [plm.blocks[0].register_forward_pre_hook(lambda module, args: states.append(args[0]))]
    handles += [block.register_forward_hook(lambda module, args, output: states.append(output))
                for block in plm.blocks]
    try:
        yield states
    finally:
        for handle in handles:
            handle.remove()


class PLMSpeedrunPreTrainedModel(PreTrainedModel):
    config_class = PLMSpeedrunConfig
    base_model_prefix = "plm"
    main_input_name = "input_ids"
    _tied_weights_keys = {"plm.head.weight": "plm.token_embedding.weight"}  # applied only if tie_word_embeddings

    def __init__(self, config: PLMSpeedrunConfig):
        super().__init__(config)
        self.plm = PLM(config.model_config())
        self.post_init()

    def _init_weights(self, module):
        """A model built from a config (not loaded) gets model.py's own initialisation, in one place."""
        if isinstance(module, PLM):
            module.init_weights()

    def get_input_embeddings(self):
        return self.plm.token_embedding

    def get_output_embeddings(self):
        return self.plm.head if self.config.tie_embeddings else None  # what transformers 4 ties to the embedding

    def _inputs(self, input_ids, attention_mask, output_hidden_states, return_dict):
        if input_ids is None:
            raise ValueError("input_ids is required (inputs_embeds is not supported)")
        hidden = self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        as_dict = self.config.return_dict if return_dict is None else return_dict
        return sequence_ids(input_ids, attention_mask), hidden, as_dict


class PLMSpeedrunModel(PLMSpeedrunPreTrainedModel):
    """Embeddings: `last_hidden_state` (B, T, D) is the final normed output; `hidden_states` per layer on request."""

    def forward(self, input_ids=None, attention_mask=None, output_hidden_states=None, return_dict=None):
        seq_ids, want_hidden, as_dict = self._inputs(input_ids, attention_mask, output_hidden_states, return_dict)
        with residual_streams(self.plm, want_hidden) as states:
            last = self.plm.hidden_states(input_ids, seq_ids)  # (B, T, D)
        hidden_states = tuple(states[:-1]) + (last,) if want_hidden else None
        if not as_dict:
            return tuple(v for v in (last, hidden_states) if v is not None)
        return BaseModelOutput(last_hidden_state=last, hidden_states=hidden_states)


class PLMSpeedrunForMaskedLM(PLMSpeedrunPreTrainedModel):
    """Masked-LM logits (B, T, 33); with `labels` (-100 = not scored) also the mean cross-entropy over the scored
    tokens, the loss the trainer minimised (it sums, then divides by the global count)."""

    def forward(self, input_ids=None, attention_mask=None, labels=None, output_hidden_states=None, return_dict=None):
        seq_ids, want_hidden, as_dict = self._inputs(input_ids, attention_mask, output_hidden_states, return_dict)
        with residual_streams(self.plm, want_hidden) as states:
            logits = self.plm.logits(input_ids, seq_ids)  # (B, T, V) fp32
        # hidden_states[L] = the head's input, recomputed with the PLM's own final norm from the stream
        hidden_states = tuple(states[:-1]) + (self.plm.final_norm(states[-1]),) if want_hidden else None
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), labels.view(-1), ignore_index=-100)
        if not as_dict:
            return tuple(v for v in (loss, logits, hidden_states) if v is not None)
        return MaskedLMOutput(loss=loss, logits=logits, hidden_states=hidden_states)
