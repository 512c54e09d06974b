"""Memory of the distillation terms, computed from a :class:`DistillPlan` and the shapes.

Three kinds, each a formula per state pair of the plan (notation of
:mod:`.memory`; ``N`` real tokens of the pair's positions, ``Q x K`` the
attention map of a score pair, ``e_S``/``e_T`` the student's and teacher's
bytes per element):

- *teacher targets*, held from the teacher's forward pass until the loss is
  computed (then freed, before the backward pass): each captured teacher tensor
  once (``B L d_T e_T`` for states, ``B h Q K e_T`` for attention scores) and,
  when the teacher's decoder runs, its logits ``B T V e_T`` and argmax ``8BT``;
- *student scores*, held likewise: ParlAI's attention keeps its softmax output,
  not the pre-softmax scores an attention term compares (``B h Q K e_S`` each);
  every other captured student tensor is kept by autograd anyway;
- *saved by the terms* for the backward pass: a state pair keeps both sides in
  float32, ``2 N d_T 4``, plus the projection's input ``N d_S e_S`` (narrow
  students); a score pair its float32 difference ``4 B h Q K``; the prediction
  KL the student's float32 log-probabilities and the teacher's probabilities,
  ``2 N V 4``; and each pair its token indices and per-token values, ``20 N``.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..agents.capture import CapturePoint
from ..agents.plan import DistillPlan, StatePair
from ..errors import DistillationError
from .memory import ModelShape, StepBatch

# Objectives written down here, by what they compare.
_STATE_OBJECTIVES = ('mse',)
_SCORE_OBJECTIVES = ('attention_mse',)
_LOGIT_OBJECTIVES = ('kl',)


@dataclass(frozen=True)
class TermMemory:
    """Bytes of the distillation terms of one step (see the module's docstring)."""

    teacher_targets: int
    student_scores: int
    saved: int
    prediction_work: int

    @property
    def held(self) -> int:
        """Alive from the forward pass until the loss, freed before backward."""
        return self.teacher_targets + self.student_scores


def _length(positions: str, batch: StepBatch) -> int:
    return batch.text_length if positions == 'encoder' else batch.label_length


def _map_size(positions: str, batch: StepBatch) -> int:
    """``Q x K`` of an attention map at ``positions``."""
    queries = batch.text_length if positions == 'encoder' else batch.label_length
    keys = batch.label_length if positions == 'decoder' else batch.text_length
    return queries * keys


def _point_bytes(
    pair: StatePair,
    shape: ModelShape,
    batch: StepBatch,
    element: int,
) -> int:
    """Bytes of the tensor a pair captures from a model of ``shape``."""
    if pair.objective in _SCORE_OBJECTIVES:
        return batch.size * shape.n_heads * _map_size(pair.positions, batch) * element
    length = _length(pair.positions, batch)
    return batch.size * length * shape.embedding_size * element


def _pair_saved(
    pair: StatePair,
    student: ModelShape,
    teacher: ModelShape,
    batch: StepBatch,
    e_s: int,
) -> int:
    """What one pair's objective keeps for the backward pass, token indices included."""
    if pair.objective in _SCORE_OBJECTIVES:
        return 4 * batch.size * student.n_heads * _map_size(pair.positions, batch)
    n = batch.size * _length(pair.positions, batch)
    if pair.objective in _LOGIT_OBJECTIVES:
        return 2 * n * teacher.vocab_size * 4 + 20 * n
    projection = n * student.embedding_size * e_s if pair.projection else 0
    return 2 * n * teacher.embedding_size * 4 + projection + 20 * n


def _check_objectives(plan: DistillPlan) -> None:
    known = _STATE_OBJECTIVES + _SCORE_OBJECTIVES + _LOGIT_OBJECTIVES
    unknown = sorted({p.objective for t in plan.terms for p in t.pairs} - set(known))
    if unknown:
        raise DistillationError(
            f'memory is written down for the objectives {", ".join(known)}, not '
            f'{", ".join(unknown)}'
        )


def term_memory(
    plan: DistillPlan,
    student: ModelShape,
    teacher: ModelShape,
    batch: StepBatch,
    student_element: int,
    teacher_element: int,
) -> TermMemory:
    """The memory of ``plan``'s terms for one step of ``batch``.

    ``prediction_work`` is the prediction KL's transient working set beyond what
    it saves, alive while it is computed: the float32 logits of both models'
    real tokens, the teacher's log-probabilities and the cross-entropy's product
    of probabilities and log-probabilities, ``4 N V 4``.
    """
    _check_objectives(plan)
    teacher_points: dict[CapturePoint, int] = {}
    student_points: dict[CapturePoint, int] = {}
    saved = 0
    for term in plan.terms:
        for pair in term.pairs:
            saved += _pair_saved(pair, student, teacher, batch, student_element)
            if not pair.teacher.is_module:
                continue
            teacher_points[pair.teacher] = _point_bytes(
                pair, teacher, batch, teacher_element
            )
            if pair.objective in _SCORE_OBJECTIVES:
                student_points[pair.student] = _point_bytes(
                    pair, student, batch, student_element
                )
    targets = sum(teacher_points.values())
    n_labels = batch.size * batch.label_length
    work = 0
    if plan.prediction is not None or plan.needs_teacher_decoder:
        targets += n_labels * (teacher.vocab_size * teacher_element + 8)
    if plan.prediction is not None:
        work = 4 * n_labels * teacher.vocab_size * 4
    return TermMemory(targets, sum(student_points.values()), saved, work)


def topk_memory(batch: StepBatch, vocab_size: int, top_k: int) -> TermMemory:
    """The prediction term against a top-k teacher cache (no live teacher).

    Targets held: the cached ids (int64), log-probabilities and rest mass (float32),
    ``B T k (8 + 4) + 4 B T``. Saved: the student's float32 log-probabilities and
    their copy with the cached tokens excluded (for the rest bin's logsumexp),
    ``2 N V 4``, the cached ids and the student's ``[N, k]`` log-probabilities
    compared, ``N k (8 + 4)``, and ``30 N``. Working set: the float32 logits of the real
    tokens, ``N V 4``, and the logsumexp's exponentials, ``N V 4``.
    """
    n = batch.size * batch.label_length
    targets = n * top_k * (8 + 4) + 4 * n
    saved = 2 * n * vocab_size * 4 + n * top_k * (8 + 4) + 30 * n
    return TermMemory(targets, 0, saved, 2 * n * vocab_size * 4)
