"""The loss terms users weight, declared once: flag, default, metrics, objectives.

``distill_loss = sum over terms of coefficient * term``. Each :class:`LossTerm`
is one ``--*-loss-coeff`` flag (the names and defaults of ParlAI's former
``projects/anti_scaling`` code); its objective is fixed or chosen by a
``--*-loss-type`` option (:class:`KindOption`). The agents' options, their help
texts, recipes and checks are all derived from these two tables.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Kind:
    """One value of a ``--*-loss-type`` option: what it computes, where it is from."""

    name: str
    summary: str
    #: Compares attention heads one to one (student and teacher head counts equal).
    headwise: bool = False


@dataclass(frozen=True)
class KindOption:
    """A ``--*-loss-type`` option choosing the objective of some terms."""

    dest: str
    default: str
    kinds: tuple[Kind, ...]

    @property
    def flag(self) -> str:
        return '--' + self.dest.replace('_', '-')

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(k.name for k in self.kinds)

    def kind(self, name: str) -> Kind:
        """The kind called ``name`` (``KeyError`` if there is none)."""
        for kind in self.kinds:
            if kind.name == name:
                return kind
        raise KeyError(name)

    def help(self) -> str:
        return '; '.join(f'{k.name}: {k.summary}' for k in self.kinds) + (
            f' (default {self.default}).'
        )


PREDICTION_KINDS = KindOption(
    'pred_loss_type',
    'kl',
    (
        Kind('kl', 'T^2 KL(teacher || student), Hinton et al.'),
        Kind('reverse_kl', 'T^2 KL(student || teacher), mode-seeking (MiniLLM, GKD)'),
        Kind('jsd', 'T^2 generalised Jensen-Shannon of GKD, --jsd-beta'),
        Kind('skew_kl', 'T^2 KL(p || a p + (1-a) q), DistiLLM, a = --skew-alpha'),
        Kind(
            'skew_reverse_kl',
            'T^2 KL(q || a q + (1-a) p), DistiLLM, a = --skew-alpha',
        ),
        Kind(
            'taid',
            'T^2 KL(p_t || q) towards TAID\'s interpolated target p_t, --taid-*',
        ),
        Kind('logit_mse', 'MSE between logits, no temperature (Ba & Caruana)'),
        Kind('soft_ce', 'T^2 cross-entropy against the teacher\'s soft targets'),
    ),
)
HIDDEN_KINDS = KindOption(
    'hidden_loss_type',
    'mse',
    (
        Kind('mse', 'mean over dims of (P h_S - h_T)^2'),
        Kind('cosine', '1 - cos(P h_S, h_T), DistilBERT'),
        Kind('pkd', 'squared distance of L2-normalised states, Patient KD'),
    ),
)
ATTENTION_KINDS = KindOption(
    'attn_loss_type',
    'score_mse',
    (
        Kind(
            'score_mse',
            'MSE between pre-softmax scores per head, TinyBERT',
            headwise=True,
        ),
        Kind(
            'distribution_kl',
            'KL between attention distributions per head, MiniLM',
            headwise=True,
        ),
        Kind(
            'value_relation',
            'KL between value-value relations per head, MiniLM',
            headwise=True,
        ),
        Kind('minilm', 'distribution_kl + value_relation, MiniLM', headwise=True),
        Kind(
            'minilmv2',
            'KL between query, key and value relations, any head counts, MiniLMv2 '
            '(--relation-heads)',
        ),
    ),
)
KIND_OPTIONS = (PREDICTION_KINDS, HIDDEN_KINDS, ATTENTION_KINDS)


@dataclass(frozen=True)
class LossTerm:
    """One weighted term of the loss, as the user sets it.

    ``metrics`` are the values reported (encoder and decoder parts are reported
    apart and added in the loss). ``objective`` is the fixed objective's name, or
    the :class:`KindOption` that chooses it. ``layerwise`` terms use the layer
    maps; ``stage`` says when two-step distillation (``--intermediate-steps``)
    uses them: ``'intermediate'`` terms first, ``'final'`` terms after.
    """

    dest: str
    default: float
    metrics: tuple[str, ...]
    compares: str
    objective: str | KindOption = 'mse'
    layerwise: bool = False
    stage: str = 'intermediate'
    former: bool = field(default=True, compare=False)

    @property
    def flag(self) -> str:
        return '--' + self.dest.replace('_', '-')

    def help(self) -> str:
        """The flag's help, true for every objective its kind option allows."""
        if isinstance(self.objective, KindOption):
            how = f'the {self.objective.flag} objective (default {self.objective.default})'
        elif self.objective == 'cross_entropy':
            how = 'the cross-entropy'
        else:
            how = f'the {self.objective} objective'
        return f'Weight of {how} {self.compares} ({" + ".join(self.metrics)}).'


TASK_TERM = LossTerm(
    'task_loss_coeff',
    1.0,
    ('loss',),
    'against the labels (ParlAI\'s own loss)',
    objective='cross_entropy',
    stage='final',
)
PREDICTION_TERM = LossTerm(
    'pred_loss_coeff',
    0.0,
    ('pred_loss',),
    'between the output distributions on the label tokens',
    objective=PREDICTION_KINDS,
    stage='final',
)
LOSS_TERMS = (
    TASK_TERM,
    LossTerm(
        'encoder_loss_coeff',
        0.0,
        ('enc_loss',),
        'between the encoder outputs (P h_S vs h_T on the context tokens)',
    ),
    LossTerm(
        'hidden_loss_coeff',
        0.0,
        ('enc_hid_loss', 'dec_hid_loss'),
        'between the outputs of mapped layers, averaged over layers',
        objective=HIDDEN_KINDS,
        layerwise=True,
    ),
    PREDICTION_TERM,
    LossTerm(
        'embedding_loss_coeff',
        0.0,
        ('enc_emb_loss', 'dec_emb_loss'),
        'between the embedding outputs that the first layers receive',
    ),
    LossTerm(
        'self_attn_loss_coeff',
        0.0,
        ('enc_self_attn_loss', 'dec_self_attn_loss'),
        'on the self-attention of mapped layers, averaged over layers',
        objective=ATTENTION_KINDS,
        layerwise=True,
    ),
    LossTerm(
        'enc_dec_attn_loss_coeff',
        0.0,
        ('enc_dec_attn_loss',),
        'on the encoder-decoder attention of mapped layers, averaged over layers',
        objective=ATTENTION_KINDS,
        layerwise=True,
    ),
)
#: The coefficient options, by dest.
COEFFICIENTS = {term.dest: term for term in LOSS_TERMS}
#: Every metric a loss term can report.
TERM_METRICS = tuple(m for term in LOSS_TERMS for m in term.metrics)


def term_of_metric(metric: str) -> LossTerm | None:
    """The declared term that reports ``metric`` (None for config-file terms)."""
    for term in LOSS_TERMS:
        if metric in term.metrics:
            return term
    return None
