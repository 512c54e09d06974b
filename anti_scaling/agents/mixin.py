"""The distillation mixin: ParlAI's hooks and the training step.

Everything decided before training (teachers, plan, layer maps, cache) comes
from :func:`anti_scaling.agents.run_setup.prepare_run`; the loss terms are
computed by :mod:`anti_scaling.agents.term_values`. The agents in
:mod:`anti_scaling.distillation` are this mixin plus a ParlAI base agent.
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import Any

import torch
from parlai.core.metrics import AverageMetric
from parlai.core.opt import Opt
from parlai.core.params import ParlaiParser

from ..compat import compatible_lr_schedulers, tolerant_byte_level_decoding
from ..errors import install_excepthook
from ..model_files import PROJECTIONS_ATTR
from ..parallel.ddp import anchor_unused_modules, release_gradients
from .capture import LOGITS, capture_states
from .checkpoints import StudentCheckpointMixin
from .encoder_sharing import provide_encoder_states
from .fused_prediction import (
    check_fusable,
    fused_chunk_size,
    fused_output_terms,
    record_generator_metrics,
)
from .on_policy import OnPolicySchedule, on_policy_batch
from .options import add_distillation_args
from .output_layer import decoder_states
from .plan import DistillPlan
from .plan_checks import dry_run_batch
from .run_setup import RunSetup, StudentKind, prepare_run
from .student import check_dictionary, prepare_student_model
from .teacher import Teacher
from .term_values import StepInputs, evaluate_plan, step_metrics


class DistillationMixin(StudentCheckpointMixin):
    """Distil one or several frozen teachers into this agent's (smaller) model.

    Checkpoints: :class:`~anti_scaling.agents.checkpoints.StudentCheckpointMixin`.
    Subclasses set ``wide`` (layer removal, teacher-initialised, no projections)
    or not (narrow: any width, projections to the teacher's width), and the
    family of teachers they accept.
    """

    wide: bool = True
    teacher_family: type
    teacher_excluded: tuple

    @classmethod
    def add_cmdline_args(
        cls, parser: ParlaiParser, partial_opt: Opt | None = None
    ) -> ParlaiParser:
        super().add_cmdline_args(parser, partial_opt=partial_opt)
        add_distillation_args(parser, wide=cls.wide, partial_opt=partial_opt)
        return parser

    @classmethod
    def student_kind(cls) -> StudentKind:
        return StudentKind(cls.wide, cls.teacher_family, cls.teacher_excluded)

    def __init__(self, opt: Opt, shared: dict[str, Any] | None = None):
        install_excepthook()
        if shared:
            self.distillation: RunSetup = shared['distillation']
        else:
            self.distillation = prepare_run(opt, self.student_kind())
        self.on_policy = OnPolicySchedule(
            opt.get('on_policy_fraction') or 0.0, opt.get('seed') or 0
        )
        super().__init__(opt, shared)

    @property
    def distill_plan(self) -> DistillPlan:
        return self.distillation.plan

    @property
    def teacher(self) -> Teacher:
        return self.distillation.teacher

    @property
    def teachers(self) -> list[Teacher]:
        return self.distillation.teachers.teachers

    def share(self) -> dict[str, Any]:
        shared = super().share()
        shared['distillation'] = self.distillation
        return shared

    def build_model(self, *args, **kwargs):  # noqa: ANN002, ANN003
        check_dictionary(self.dict, self.teacher, self.opt.get('dict_file'))
        model = super().build_model(*args, **kwargs)
        d = self.dict
        dry_run = dry_run_batch(
            self.NULL_IDX, d[d.start_token], d[d.end_token], d[d.unk_token]
        )
        prepare_student_model(model, self.distillation, self.opt, self.wide, dry_run)
        if fused_chunk_size(self.opt):
            check_fusable(
                model, [t.model for t in self.teachers if t.model is not None]
            )
        return model

    def build_lr_scheduler(self, states=None, hard_reset=False):  # noqa: ANN001
        with compatible_lr_schedulers():
            result = super().build_lr_scheduler(states, hard_reset)
        if not getattr(self, 'scheduler', None) and states and not hard_reset:
            # ParlAI restores the step count only through a scheduler; schedules
            # of loss weights and temperature need it on resume too.
            self._number_training_updates = int(
                states.get('number_training_updates', 0)
            )
        return result

    def compute_loss(self, batch, return_output: bool = False):  # noqa: ANN001
        """Task loss plus every active distillation term, weighted (``distill_loss``).

        Weights, temperature and TAID's interpolation are taken at the current
        training step. The teachers run first, without gradients; student states
        are captured only inside this forward pass.
        """
        plan = self.distill_plan
        self._unused_parameters = []
        if self.opt.get('freeze_encoder'):
            self._student_model.encoder.eval()  # a frozen encoder runs without dropout
        if not plan.uses_teacher:
            return super().compute_loss(batch, return_output)
        step = int(self._number_training_updates)
        weights = plan.weights(step)
        on_policy = self.on_policy.now(self.model.training)
        if on_policy:
            batch = self._on_policy_batch(batch)
            weights['loss'] = 0.0  # no cross-entropy against the student's samples
        terms = tuple(t for t in plan.terms if weights[t.metric] > 0)
        inputs = StepInputs(
            batch.text_vec != self.NULL_IDX,
            batch.label_vec != self.NULL_IDX,
            plan.temperature_at(step),
            plan.interpolation_at(step),
            getattr(self._student_model, PROJECTIONS_ATTR, None),
        )
        fused_training = self.model.training and not return_output
        chunk = fused_chunk_size(self.opt) if fused_training else None
        encoder_states = self._shared_encoder_states(batch)
        teacher_states, teacher_output, cached = self._teacher_targets(
            batch, terms, inputs, encoder_states, fused=chunk is not None
        )
        points = [p.student for t in terms for p in t.pairs if p.student.is_module]
        cloned = plan.cloned.get('student', ())
        with ExitStack() as stack:
            student_states = stack.enter_context(
                capture_states(self._student_model, points, clone=cloned)
            )
            if encoder_states is not None:
                stack.enter_context(provide_encoder_states(self.model, encoder_states))
            if chunk is not None:
                stack.enter_context(decoder_states(self._student_model))
            task_loss, model_output = self._student_forward(batch, on_policy, chunk)
        if chunk is None:
            student_states = {**student_states, LOGITS: model_output[0]}
            total = weights['loss'] * task_loss
            tokens = model_output[1], teacher_output and teacher_output[1]
            teacher_output = None  # its logits leave with their term
        else:
            prediction = plan.prediction if plan.prediction in terms else None
            fused = fused_output_terms(
                self._student_model,
                model_output[0],
                batch.label_vec,
                inputs,
                weights,
                prediction,
                teacher_output if cached is None else cached,
                chunk,
            )
            if not on_policy:
                record_generator_metrics(self, batch, fused.loss_per_token, fused.preds)
            terms, total = tuple(t for t in terms if t is not prediction), fused.loss
            tokens = fused.preds, fused.teacher_tokens
        values = evaluate_plan(plan, student_states, teacher_states, inputs, terms)
        for name, value in values.items():
            total = total + weights[name] * value.mean()
        if chunk is not None and fused.prediction is not None:
            values[prediction.metric] = fused.prediction
        for name, value in values.items():
            self.record_local_metric(name, value.metrics())
        metrics = step_metrics(*tokens, cached, inputs, total)
        batch_size = inputs.label_mask.size(0)
        if self.model.training and self.on_policy.fraction > 0:
            metrics['on_policy'] = AverageMetric.many([float(on_policy)] * batch_size)
        if plan.temperature_max:
            metrics['distill_temp'] = AverageMetric.many(
                [inputs.temperature] * batch_size
            )
        for name, items in metrics.items():
            self.record_local_metric(name, items)
        prediction = plan.prediction
        if plan.interpolation and self.model.training and prediction.metric in values:
            plan.interpolation.update(
                step, float(values[prediction.metric].mean().detach())
            )
        if self.model.training:
            # under DDP every trainable parameter needs a gradient each step
            total, self._unused_parameters = anchor_unused_modules(
                self.model,
                total,
                inputs.projections,
                {p.projection for t in terms for p in t.pairs if p.projection},
            )
        if return_output:
            return total, model_output
        return total

    def backward(self, loss, **kwargs):  # noqa: ANN001, ANN003
        """ParlAI's backward; parameters this step did not use keep no gradient."""
        super().backward(loss, **kwargs)
        release_gradients(getattr(self, '_unused_parameters', []))
        self._unused_parameters = []

    def eval_step(self, batch):  # noqa: ANN001
        """ParlAI's evaluation step; a byte-level BPE reply that starts mid-word (an
        early student's) decodes instead of failing ParlAI's assertion."""
        with tolerant_byte_level_decoding():
            return super().eval_step(batch)

    def _teacher_targets(
        self, batch, terms, inputs: StepInputs, encoder_states=None, fused=False
    ):  # noqa: ANN001
        """``(states, (logits, tokens) or None, cache entry or None)`` from the
        teachers, or from the teacher-output cache."""
        cache = self.distillation.cache
        if cache is not None:
            cached = cache.lookup(
                batch.text_vec,
                batch.label_vec,
                self.NULL_IDX,
                allow_missing=not self.model.training,
            )
            return {LOGITS: cached}, None, cached
        states, output = self.distillation.teachers.targets(
            self._model_input(batch),
            self._encoder_input(batch),
            batch.label_vec,
            self.distill_plan,
            terms,
            inputs.temperature,
            encoder_states,
            fused,
        )
        if output is not None and not fused:
            states = {**states, LOGITS: output[0]}
        return states, output, None

    def _student_forward(
        self, batch, on_policy: bool, chunk: int | None = None
    ):  # noqa: ANN001
        """ParlAI's own loss computation; on own samples, its metrics stay silent.
        Fused (``chunk``): the model's output alone, ``(None, (states, ...))``."""
        if chunk is not None:
            return None, self.model(*self._model_input(batch), ys=batch.label_vec)
        if not on_policy:
            return super().compute_loss(batch, return_output=True)
        self._control_local_metrics(disabled=True)
        try:
            return super().compute_loss(batch, return_output=True)
        finally:
            self._control_local_metrics(enabled=True)

    def _on_policy_batch(self, batch):  # noqa: ANN001
        """A copy of ``batch`` whose labels are replies sampled from the student."""
        initial = self._get_initial_decoder_input(
            batch.text_vec.size(0), 1, batch.text_vec.device
        )
        return on_policy_batch(
            self._student_model,
            batch,
            self._encoder_input(batch),
            initial,
            self.opt,
            (self.END_IDX, self.NULL_IDX),
        )

    def _shared_encoder_states(self, batch):  # noqa: ANN001
        """With ``--share-teacher-encoder``, the student encoder's states (run once)."""
        if not self.opt.get('share_teacher_encoder'):
            return None
        xs = self._encoder_input(batch)
        encoder = self._student_model.encoder
        if self.opt.get('freeze_encoder'):
            with torch.no_grad():
                return encoder(*xs)
        return encoder(*xs)
