"""The task loss and the prediction term, fused with the student's output layer.

With ``--fused-prediction true`` a training step never holds the logits of the
whole batch: the student (and each teacher) stops before its output layer
(:func:`.output_layer.decoder_states`), and
:func:`anti_scaling.losses.fused_output.fused_output_loss` makes the logits of
``--prediction-chunk-size`` label tokens at a time, the teachers' as well
(:class:`.teacher_targets.TeacherOutputs`). The values are the unfused step's:
ParlAI's cross-entropy and its metrics (``loss``, ``ppl``, ``token_acc``,
``token_em``), the ``--pred-loss-type`` objective of :mod:`.objectives` (or the
top-k cache's KL) taken row by row, weighted as :meth:`DistillPlan.weights` says.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from parlai.core.metrics import AverageMetric
from parlai.core.torch_generator_agent import PPLMetric
from torch import nn

from .. import losses
from ..errors import DistillationError
from ..losses.fused_output import (
    DEFAULT_CHUNK_SIZE,
    check_chunk_size,
    fused_output_loss,
)
from ..losses.token_mean import per_example
from .output_layer import output_layer
from .plan import DistillTerm
from .term_values import StepInputs, TermValue, objective_params


def fused_chunk_size(opt: dict) -> int | None:
    """The chunk size of ``--fused-prediction`` (None when it is off);
    ``DistillationError`` (one line) for a size that is not a positive integer."""
    raw = opt.get('prediction_chunk_size')
    raw = DEFAULT_CHUNK_SIZE if raw is None else raw
    try:
        size = check_chunk_size(int(raw) if str(raw).strip().isdigit() else raw)
    except ValueError:
        raise DistillationError(
            f'--prediction-chunk-size is {raw!r}: it must be a positive integer'
        ) from None
    return size if opt.get('fused_prediction') else None


def check_fusable(student: nn.Module, teachers: list[nn.Module]) -> None:
    """Refuse ``--fused-prediction`` for a model whose output layer is not ParlAI's."""
    output_layer(student)
    for model in teachers:
        output_layer(model, 'teacher')


@dataclass
class FusedOutputs:
    """What the fused output layer gives a step.

    ``loss`` (with gradient) is ``w_task * loss + w_pred * pred_loss`` at this
    step's weights; ``loss_per_token`` ``[B, T]`` ParlAI's criterion (0 at
    padding) and ``preds`` ``[B, T]`` its argmax, without gradient;
    ``prediction`` the term's value (for metrics), ``teacher_tokens`` the live
    teachers' argmax ``[B, T]``.
    """

    loss: torch.Tensor
    loss_per_token: torch.Tensor
    preds: torch.Tensor
    prediction: TermValue | None = None
    teacher_tokens: torch.Tensor | None = None


def _scatter(rows: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    out = rows.new_zeros(mask.shape)
    out[mask] = rows
    return out


def _prediction_rows(
    term: DistillTerm, teacher: Any, inputs: StepInputs
) -> tuple[Callable, torch.Tensor]:
    """``(rows(z, start, end) -> (values, teacher tokens), counted)``: the term's
    per-row values against the live teachers or the cache, and which label tokens
    it counts ``[B, T]``."""
    mask = inputs.label_mask
    if hasattr(teacher, 'logprobs'):  # a top-k cache entry
        counted = mask & teacher.found[:, None]
        found, ids = counted[mask], teacher.ids[mask]
        logprobs, rest = teacher.logprobs[mask], teacher.rest[mask]

        def cached(z: torch.Tensor, start: int, end: int):  # noqa: ANN202
            part = slice(start, end)
            value = losses.topk_prediction_kl(
                z[:, None],
                ids[part, None],
                logprobs[part, None],
                rest[part, None],
                found[part, None],
                inputs.temperature,
            )
            return value.total, ids[part, 0]

        return cached, counted
    spec, params = objective_params(term.pairs[0], inputs)
    rows = teacher.rows(mask)

    def live(z: torch.Tensor, start: int, end: int):  # noqa: ANN202
        target, tokens = rows.logits(start, end, inputs.temperature)
        every = torch.ones(end - start, 1, dtype=torch.bool, device=z.device)
        return spec.function(z[:, None], target[:, None], every, **params).total, tokens

    return live, mask


def fused_output_terms(
    model: nn.Module,
    states: torch.Tensor,
    labels: torch.Tensor,
    inputs: StepInputs,
    weights: dict[str, float],
    term: DistillTerm | None,
    teacher: Any,
    chunk_size: int,
) -> FusedOutputs:
    """ParlAI's task loss and ``term`` (the prediction term, or None) from the
    student's decoder ``states`` ``[B, T, D]``, through its output layer, fused.

    ``teacher`` is the teachers' :class:`.teacher_targets.TeacherOutputs` or a
    top-k cache entry (None without ``term``).
    """
    mask = inputs.label_mask
    layer = output_layer(model)
    targets = labels[mask]
    task_scale = weights['loss'] / max(1, targets.numel())
    rows, counted, pred_scale = None, None, 0.0
    if term is not None:
        if len(term.pairs) != 1:
            raise DistillationError(
                f'--fused-prediction: {term.metric} has {len(term.pairs)} pairs; '
                'only a single prediction pair can be fused'
            )
        rows, counted = _prediction_rows(term, teacher, inputs)
        count = max(1, int(counted.sum()))
        pred_scale = weights[term.metric] / count / term.groups
    elif teacher is not None and hasattr(teacher, 'rows'):  # teacher_acc alone
        live = teacher.rows(mask)

        def rows(_z: torch.Tensor, start: int, end: int):  # noqa: ANN202
            return None, live.logits(start, end, 1.0)[1]

    def chunk_loss(z: torch.Tensor, start: int, end: int):  # noqa: ANN202
        task = F.cross_entropy(z, targets[start:end], reduction='none')
        loss = task_scale * task.sum()
        if rows is None:
            return loss, (task.detach(),)
        value, tokens = rows(z, start, end)
        if value is None:
            return loss, (task.detach(), tokens)
        return loss + pred_scale * value.sum(), (task.detach(), value.detach(), tokens)

    loss, columns, preds = fused_output_loss(
        states[mask],
        layer.weight,
        layer.bias,
        chunk_loss,
        chunk_size,
        layer.masked_column,
    )
    out = FusedOutputs(loss, _scatter(columns[0], mask), _scatter(preds, mask))
    if term is not None:
        total = per_example(columns[1], mask).total
        count = counted.sum(dim=1).to(total.dtype)
        out.prediction = TermValue((losses.TokenMean(total, count),), term.groups)
    if rows is not None and not hasattr(teacher, 'logprobs'):
        out.teacher_tokens = _scatter(columns[-1], mask)
    return out


def record_generator_metrics(
    agent: Any, batch: Any, loss_per_token, preds
) -> None:  # noqa: ANN001
    """What ``TorchGeneratorAgent.compute_loss`` records (ParlAI 1.7.2), from the
    fused step's per-token loss and argmax."""
    labels = batch.label_vec
    notnull = labels.ne(agent.NULL_IDX)
    agent.record_local_metric('loss', AverageMetric.from_mask(loss_per_token, notnull))
    agent.record_local_metric('ppl', PPLMetric.from_mask(loss_per_token, notnull))
    agent.record_local_metric(
        'token_acc', AverageMetric.from_mask(labels == preds, notnull)
    )
    num_target_tokens = notnull.long().sum(dim=-1)
    num_tokens_correct = ((labels == preds) * notnull).sum(dim=-1)
    agent.record_local_metric(
        'token_em', AverageMetric.many(num_tokens_correct == num_target_tokens)
    )
    agent.record_per_token_metrics(batch, loss_per_token)
