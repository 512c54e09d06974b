"""Distillation objectives as pure tensor functions, grouped by family.

- :mod:`.prediction`: divergences between output distributions (KL, reverse KL,
  JSD, skew KL, TAID's interpolated target, soft cross-entropy, logit MSE);
- :mod:`.hidden`: hidden states compared token by token (MSE, cosine, Patient KD);
- :mod:`.attention`: attention scores, distributions and relations (TinyBERT,
  MiniLM, MiniLMv2) and the masks of valid (query, key) pairs;
- :mod:`.topk`: the forward KL against a top-k teacher-output cache;
- :mod:`.fused_output`: an output layer and the losses on its logits, fused and
  chunked (no ``[tokens x vocabulary]`` tensor of the whole batch is kept).

Every function returns a :class:`TokenMean` (per-example sums and counts) and
computes in float32 whatever the dtype of its inputs; each docstring states its
formula. Notation: ``B`` batch, ``T`` positions, ``D`` width, ``V`` vocabulary,
``H`` heads, ``Q``/``K`` query/key positions; masks are bool, true for real
tokens (or valid pairs).
"""

from .attention import (
    attention_distribution_kl,
    attention_score_mse,
    causal_attention_pairs,
    cross_attention_pairs,
    relation_kl,
    self_attention_pairs,
    value_relation_kl,
)
from .fused_output import fused_output_loss
from .hidden import cosine_embedding_loss, masked_mse, normalized_state_mse
from .prediction import (
    interpolated_kl,
    logit_mse,
    prediction_jsd,
    prediction_kl,
    reverse_prediction_kl,
    skew_kl,
    skew_reverse_kl,
    soft_cross_entropy,
    tempered_log_probs,
    token_agreement,
)
from .token_mean import TokenMean
from .topk import cached_agreement, topk_prediction_kl

__all__ = [
    'TokenMean',
    'attention_distribution_kl',
    'attention_score_mse',
    'cached_agreement',
    'causal_attention_pairs',
    'cosine_embedding_loss',
    'cross_attention_pairs',
    'fused_output_loss',
    'interpolated_kl',
    'logit_mse',
    'masked_mse',
    'normalized_state_mse',
    'prediction_jsd',
    'prediction_kl',
    'relation_kl',
    'reverse_prediction_kl',
    'self_attention_pairs',
    'skew_kl',
    'skew_reverse_kl',
    'soft_cross_entropy',
    'tempered_log_probs',
    'token_agreement',
    'topk_prediction_kl',
    'value_relation_kl',
]
