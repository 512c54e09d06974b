"""The distillation mixin: what the four public agents add to ParlAI's generators.

It composes the pieces of this package: the teacher loader, option inheritance,
layer maps, the student checks and initialisation, the distillation plan
(command-line coefficients and ``--distill-config`` terms), state capture and
the loss functions. The agents in :mod:`anti_scaling.distillation` are this
mixin plus a ParlAI base agent.
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import tempfile
from typing import Any

import parlai.utils.logging as logging
import torch
import torch.nn.functional as F
from parlai.core.metrics import AverageMetric
from parlai.core.opt import Opt
from parlai.core.params import ParlaiParser
from parlai.utils.distributed import is_distributed

from .. import losses
from ..compat import compatible_lr_schedulers
from ..errors import DistillationError, install_excepthook
from ..fileio import atomic_write
from ..model_files import (
    OPTIMIZER_PARAM_NAMES,
    PROJECTION_PREFIX,
    PROJECTIONS_ATTR,
    freeze,
)
from ..parallel.checks import check_parallel_options
from ..parallel.ddp import anchor_unused_modules, release_gradients, unwrap_model
from ..parallel.teacher_placement import (
    building_local_model,
    check_teacher_device,
    student_device,
    teacher_overrides,
)
from ..zoo.recipes import apply_recipe, get_recipe, recipe_teacher_mismatches
from .capture import capture_states
from .config import read_config, terms_from_config
from .evaluate import evaluate_plan
from .layer_maps import format_layer_map, parse_layer_map
from .options import (
    add_distillation_args,
    check_required,
    inherit_teacher_options,
    restore_checkpoint_options,
    stack_layers,
    teacher_paths,
    teacher_weights,
)
from .plan import HEADWISE_ATTENTION_KINDS, DistillPlan, plan_from_options
from .shapes import capture_once, check_modules, dry_run_batch, resolve_plan
from .shortcuts import (
    check_shared_encoder,
    provide_encoder_states,
    replies_to_labels,
    sample_replies,
)
from .student import (
    build_projections,
    check_attention_heads,
    check_wide_student,
    copy_teacher_weights,
)
from .teacher import Teacher, load_teacher

STACKS = ('encoder', 'decoder')
_SHARED = (
    'teacher_cache',
    'teachers',
    'teacher',
    'teacher_mix',
    'intermediate_teacher',
    'distill_plan',
    'init_layer_maps',
)


class DistillationMixin:
    """Distil one or several frozen teachers into this agent's (smaller) model.

    Subclasses set ``wide`` (layer removal, teacher-initialised, no projections)
    or not (narrow: any width, projections to the teacher's width), and the
    family of teachers they accept.
    """

    wide: bool = True
    teacher_family: type
    teacher_excluded: tuple

    # ParlAI hooks ---------------------------------------------------------------

    @classmethod
    def add_cmdline_args(
        cls, parser: ParlaiParser, partial_opt: Opt | None = None
    ) -> ParlaiParser:
        super().add_cmdline_args(parser, partial_opt=partial_opt)
        add_distillation_args(parser, wide=cls.wide, partial_opt=partial_opt)
        return parser

    def __init__(self, opt: Opt, shared: dict[str, Any] | None = None):
        install_excepthook()
        if shared:
            for key in _SHARED:
                setattr(self, key, shared[key])
        else:
            opt = self._prepare_distillation(opt)
        super().__init__(opt, shared)

    def share(self) -> dict[str, Any]:
        shared = super().share()
        for key in _SHARED:
            shared[key] = getattr(self, key)
        return shared

    def build_model(self, *args, **kwargs):
        self._check_dictionary()
        model = super().build_model(*args, **kwargs)
        self.distill_plan = self._resolve_plan(model)
        if self.distill_plan.projections:
            setattr(
                model,
                PROJECTIONS_ATTR,
                build_projections(self.distill_plan.projections),
            )
        if self.wide and self.opt.get('copy_teacher_weights', True):
            if self._checkpoint_to_load():
                logging.info('Resuming from a checkpoint: not copying teacher weights')
            else:
                copied = copy_teacher_weights(
                    model, self.teacher.model, self.init_layer_maps
                )
                logging.info(
                    f'Initialised {len(copied)} student tensors from the teacher '
                    f'(encoder layers {self.init_layer_maps["encoder"]}, decoder '
                    f'layers {self.init_layer_maps["decoder"]})'
                )
        if self.opt.get('freeze_encoder'):
            count = freeze(model.encoder)
            logging.info(
                f'Froze the student encoder ({count} tensors, token embeddings '
                'included: ParlAI ties them to the decoder and output layer)'
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

    def save(self, path: str | None = None) -> None:
        """Save as ParlAI does, and make sure ``MODEL.dict`` is this student's dictionary.

        ParlAI keeps an existing ``MODEL.dict``; one left by an earlier run (e.g.
        built from the task data) would silently give the student the wrong
        vocabulary, so it is rewritten whenever it differs.
        """
        super().save(path)
        path = self.opt.get('model_file') if path is None else path
        if not path or not hasattr(self, 'dict'):
            return
        dict_path = path + '.dict'
        with tempfile.TemporaryDirectory() as tmpdir:
            fresh = os.path.join(tmpdir, 'dict')
            self.dict.save(fresh, sort=False)
            with open(fresh, 'rb') as fh:
                content = fh.read()
        if os.path.isfile(dict_path):
            with open(dict_path, 'rb') as fh:
                if fh.read() == content:
                    return
            logging.warning(
                f"Replacing {dict_path}: it was not the student's dictionary"
            )
        atomic_write(dict_path, lambda fh: fh.write(content), mode='wb')

    @property
    def _student_model(self) -> torch.nn.Module:
        """The student itself, also when ParlAI wrapped it in DistributedDataParallel."""
        return unwrap_model(self.model)

    def state_dict(self) -> dict[str, Any]:
        states = super().state_dict()
        if hasattr(self, 'optimizer') and 'model' in states:
            states[OPTIMIZER_PARAM_NAMES] = [
                name
                for name, p in self._student_model.named_parameters()
                if p.requires_grad
            ]
        return states

    def load_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Load a checkpoint; projections the current run does not use are dropped.

        Changing terms between runs (e.g. intermediate terms first, then
        predictions only) changes the set of projections; those missing from the
        checkpoint keep their fresh initialisation.
        """
        current = self._student_model.state_dict()
        state_dict = {
            k: v
            for k, v in state_dict.items()
            if not k.startswith(PROJECTION_PREFIX) or k in current
        }
        for key, value in current.items():
            if key.startswith(PROJECTION_PREFIX) and key not in state_dict:
                state_dict[key] = value
        super().load_state_dict(state_dict)

    # the distillation loss ------------------------------------------------------

    def compute_loss(self, batch, return_output: bool = False):  # noqa: ANN001
        """Task loss plus every active distillation term, weighted (``distill_loss``).

        Weights and temperature are taken at the current training step
        (schedules, two-step distillation, annealing). Student states are
        captured only inside this forward pass; the teachers run first, without
        gradients. Metrics: see the loss table of DESIGN.md and docs/methods.md.
        """
        plan = self.distill_plan
        self._unused_parameters = []
        if self.opt.get('freeze_encoder'):
            self._student_model.encoder.eval()  # a frozen encoder runs without dropout
        if not plan.uses_teacher:
            return super().compute_loss(batch, return_output)
        step = int(self._number_training_updates)
        weights = plan.weights(step)
        temperature = plan.temperature_at(step)
        on_policy = self._on_policy_now()
        if on_policy:
            batch = self._on_policy_batch(batch)
            weights['loss'] = 0.0  # no cross-entropy against the student's own samples
        terms = tuple(t for t in plan.terms if weights[t.metric] > 0)
        use_pred = weights['pred_loss'] > 0
        active = dataclasses.replace(plan, terms=terms)
        encoder_states = self._shared_encoder_states(batch)
        cached = None
        if self.teacher_cache is not None:
            cached = self.teacher_cache.lookup(
                batch.text_vec,
                batch.label_vec,
                self.NULL_IDX,
                allow_missing=not self.model.training,
            )
            teacher_states, teacher_output = {}, None
        else:
            # The teachers run first: their activations are freed before the
            # student's graph is built, so only what the loss needs stays in memory.
            teacher_states, teacher_output = self._run_teachers(
                batch, active, use_pred, temperature, encoder_states
            )
        points = active.student_points
        with capture_states(self._student_model, points) as student_states:
            if encoder_states is not None:
                with provide_encoder_states(self.model, encoder_states):
                    task_loss, model_output = self._student_forward(batch, on_policy)
            else:
                task_loss, model_output = self._student_forward(batch, on_policy)

        context_mask = batch.text_vec != self.NULL_IDX
        label_mask = batch.label_vec != self.NULL_IDX
        values = evaluate_plan(
            active,
            student_states,
            teacher_states,
            context_mask,
            label_mask,
            getattr(self._student_model, PROJECTIONS_ATTR, None),
        )
        if cached is not None:
            found = label_mask & cached.found[:, None]
            if use_pred:
                values['pred_loss'] = losses.topk_prediction_kl(
                    model_output[0],
                    cached.ids,
                    cached.logprobs,
                    cached.rest,
                    found,
                    temperature,
                )
        elif use_pred:
            values['pred_loss'] = losses.prediction_loss(
                plan.pred_kind,
                model_output[0],
                teacher_output[0],
                label_mask,
                temperature,
                plan.jsd_beta,
            )
        total = weights['loss'] * task_loss
        for name, value in values.items():
            total = total + weights[name] * value.mean()
            self._record_token_mean(name, value)
        if teacher_output is not None:
            # ParlAI's forced decoding already took each model's argmax
            self._record_token_mean(
                'teacher_acc',
                losses.token_agreement(model_output[1], teacher_output[1], label_mask),
            )
        elif cached is not None:
            self._record_token_mean(
                'teacher_acc',
                losses.cached_agreement(model_output[1], cached.ids, found),
            )
            self.record_local_metric(
                'cache_hits', AverageMetric.many(cached.found.float().tolist())
            )
        batch_size = label_mask.size(0)
        self.record_local_metric(
            'distill_loss', AverageMetric.many([total.item()] * batch_size)
        )
        if self.model.training and self._on_policy_fraction:
            self.record_local_metric(
                'on_policy', AverageMetric.many([float(on_policy)] * batch_size)
            )
        if plan.temperature_max:
            self.record_local_metric(
                'distill_temp', AverageMetric.many([temperature] * batch_size)
            )
        if self.model.training:
            # under DDP every trainable parameter needs a gradient each step
            total, self._unused_parameters = anchor_unused_modules(
                self.model,
                total,
                getattr(self._student_model, PROJECTIONS_ATTR, None),
                {p.projection for t in terms for p in t.pairs if p.projection},
            )
        if return_output:
            return total, model_output
        return total

    def backward(self, loss, **kwargs):  # noqa: ANN001
        """ParlAI's backward; parameters this step did not use keep no gradient."""
        super().backward(loss, **kwargs)
        release_gradients(getattr(self, '_unused_parameters', []))
        self._unused_parameters = []

    def _student_forward(self, batch, on_policy: bool):  # noqa: ANN001
        """ParlAI's own loss computation; on own samples, its metrics stay silent."""
        if not on_policy:
            return super().compute_loss(batch, return_output=True)
        self._control_local_metrics(disabled=True)
        try:
            return super().compute_loss(batch, return_output=True)
        finally:
            self._control_local_metrics(enabled=True)

    @property
    def _on_policy_fraction(self) -> float:
        return float(self.opt.get('on_policy_fraction') or 0.0)

    def _on_policy_now(self) -> bool:
        """Whether this training batch uses student samples (never in evaluation)."""
        if not (self.model.training and self._on_policy_fraction > 0):
            return False
        if not hasattr(self, '_on_policy_rng'):
            self._on_policy_rng = random.Random(self.opt.get('seed') or 0)
        return self._on_policy_rng.random() < self._on_policy_fraction

    def _on_policy_batch(self, batch):  # noqa: ANN001
        """A copy of ``batch`` whose labels are replies sampled from the student."""
        initial = self._get_initial_decoder_input(
            batch.text_vec.size(0), 1, batch.text_vec.device
        )
        self.model.eval()
        try:
            samples = sample_replies(
                self._student_model,
                self._encoder_input(batch),
                initial,
                int(self.opt.get('on_policy_max_length') or 32),
                float(self.opt.get('on_policy_temperature') or 1.0),
                int(self.opt.get('on_policy_topk') or 0),
                self.END_IDX,
            )
        finally:
            self.model.train()
            if self.opt.get('freeze_encoder'):
                self._student_model.encoder.eval()
        labels = replies_to_labels(
            list(samples[:, initial.size(1) :]), self.END_IDX, self.NULL_IDX
        )
        sampled = type(batch)(**dict(batch.items()))
        sampled.label_vec = labels.to(batch.label_vec.device)
        sampled.labels = None
        return sampled

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

    def _record_token_mean(self, name: str, value: losses.TokenMean) -> None:
        self.record_local_metric(
            name, AverageMetric.many(value.total.tolist(), value.count.tolist())
        )

    def _run_teachers(
        self,
        batch,  # noqa: ANN001
        plan: DistillPlan,
        use_pred: bool,
        temperature: float,
        encoder_states=None,  # noqa: ANN001
    ):
        """Teacher forward passes (no gradients).

        Returns the designated teacher's captured states and, when some teacher's
        decoder ran, ``(logits, tokens)``: with several teachers, ``logits`` are
        ``T * log(sum_i w_i softmax(z_i / T))``, whose tempered softmax is the
        weighted average of the teachers' distributions, and ``tokens`` its argmax.
        """
        need_decoder = use_pred or plan.needs_teacher_decoder
        xs = self._model_input(batch)
        extra = {}
        if encoder_states is not None:  # the shared encoder already ran
            extra['prev_enc'] = tuple(
                s.detach() if torch.is_tensor(s) else s for s in encoder_states
            )
        outputs, states = [], {}
        with torch.no_grad():
            for i, teacher in enumerate(self.teachers):
                model = teacher.model
                if i == self.intermediate_teacher:
                    with capture_states(model, plan.teacher_points) as captured:
                        if need_decoder:
                            outputs.append(model(*xs, ys=batch.label_vec, **extra)[:2])
                        else:
                            model.encoder(*self._encoder_input(batch))
                    states = captured
                elif use_pred:
                    outputs.append(model(*xs, ys=batch.label_vec)[:2])
            if not outputs:
                return states, None
            if len(outputs) == 1:
                return states, outputs[0]
            log_mix = torch.logsumexp(
                torch.stack(
                    [
                        math.log(w) + F.log_softmax(out[0].float() / temperature, -1)
                        for w, out in zip(self.teacher_mix, outputs)
                        if w > 0
                    ]
                ),
                dim=0,
            )
        return states, (log_mix * temperature, log_mix.argmax(dim=-1))

    # set-up ---------------------------------------------------------------------

    def _check_dictionary(self) -> None:
        """The student's dictionary (complete, fp16 padding included) is the teacher's.

        With a teacher-output cache the teacher is not built; the cache's own
        fingerprint (the dictionary's content and options) is checked instead.
        """
        if self.teacher.model is None:
            return
        teacher_dict = self.teacher.dict
        if self.dict.tok2ind != teacher_dict.tok2ind:
            raise DistillationError(
                f"the student dictionary ({self.opt.get('dict_file')}, "
                f"{len(self.dict)} tokens) differs from the teacher's "
                f"({self.teacher.opt.get('dict_file')}, {len(teacher_dict)} tokens): "
                "drop --dict-file to use the teacher's dictionary"
            )

    def _resolve_plan(self, model: torch.nn.Module) -> DistillPlan:
        """Check every term on one dry forward pass of student and teacher."""
        plan = self.distill_plan
        if not plan.terms:
            return plan
        check_modules(model, plan.student_points, 'student')
        check_modules(self.teacher.model, plan.teacher_points, 'teacher')
        text, label = dry_run_batch(
            self.NULL_IDX,
            self.dict[self.dict.start_token],
            self.dict[self.dict.end_token],
            self.dict[self.dict.unk_token],
        )
        student = capture_once(model, plan.student_points, text, label)
        teacher = capture_once(self.teacher.model, plan.teacher_points, text, label)
        return resolve_plan(plan, student, teacher)

    def _checkpoint_to_load(self) -> bool:
        """Whether ParlAI will load weights (resume or --init-model) after building."""
        for key in ('init_model', 'model_file'):
            path = self.opt.get(key)
            if path and os.path.isfile(path):
                return True
        return False

    def _load_teachers(self, opt: Opt) -> None:
        paths = teacher_paths(opt['teacher_model'])
        # each rank builds its own frozen teachers, alone, on the student's device
        with building_local_model():
            self.teachers: list[Teacher] = [
                load_teacher(
                    path,
                    datapath=opt.get('datapath'),
                    expected=self.teacher_family,
                    excluded=self.teacher_excluded,
                    overrides=teacher_overrides(opt),
                    weights=self._teacher_weights_needed(opt),
                )
                for path in paths
            ]
        for teacher in self.teachers:
            if teacher.model is not None:
                check_teacher_device(teacher.model, student_device(opt), teacher.path)
        self.teacher_mix = teacher_weights(opt, len(paths))
        index = int(opt.get('intermediate_teacher') or 0)
        if not 0 <= index < len(paths):
            raise DistillationError(
                f'--intermediate-teacher {index}: there are {len(paths)} teachers '
                f'(valid indices 0..{len(paths) - 1})'
            )
        self.intermediate_teacher = index
        self.teacher: Teacher = self.teachers[index]
        for other in self.teachers:
            if other.dict.tok2ind != self.teacher.dict.tok2ind:
                raise DistillationError(
                    f'teachers {self.teacher.path} and {other.path} have different '
                    'dictionaries: averaged soft targets need one shared vocabulary'
                )

    def _teacher_weights_needed(self, opt: Opt) -> bool:
        """A cache replaces the teacher, except to initialise a new wide student."""
        if not opt.get('teacher_cache'):
            return True
        resuming = any(
            opt.get(key) and os.path.isfile(opt[key])
            for key in ('init_model', 'model_file')
        )
        return (
            self.wide and bool(opt.get('copy_teacher_weights', True)) and not resuming
        )

    def _open_teacher_cache(self, opt: Opt) -> None:
        """Open ``--teacher-cache`` and check it fits this run (before any work)."""
        self.teacher_cache = None
        path = opt.get('teacher_cache')
        if not path:
            return
        plan = self.distill_plan
        problems = []
        if plan.terms:
            problems.append(
                'intermediate terms need the live teacher (set '
                + ', '.join(sorted({t.metric for t in plan.terms}))
                + ' to 0)'
            )
        if plan.pred_kind != 'kl':
            problems.append(
                f'--pred-loss-type {plan.pred_kind} (only kl has a top-k form)'
            )
        if len(self.teachers) > 1:
            problems.append('several teachers')
        if float(opt.get('on_policy_fraction') or 0) > 0:
            problems.append('on-policy batches (their samples are not cached)')
        if plan.temperature_max:
            problems.append('temperature annealing (a cache holds one temperature)')
        if float(opt.get('bpe_dropout') or 0) > 0:
            problems.append(
                '--bpe-dropout (labels tokenised anew each time match no cached entry)'
            )
        if problems:
            raise DistillationError(
                '--teacher-cache gives prediction-layer targets only; this run also '
                'asks for ' + '; '.join(problems)
            )
        from ..cache import open_for_run

        self.teacher_cache = open_for_run(
            path, self.teacher.path, opt.get('dict_file'), opt
        )
        logging.info(f'Prediction targets come from the teacher cache {path}')

    def _prepare_distillation(self, opt: Opt) -> Opt:
        """Load the teachers, complete and check the student's options, plan the loss.

        Runs before ParlAI builds anything, so every bad input fails here with a
        one-line :class:`DistillationError` and nothing is written.
        """
        check_parallel_options(opt, distributed=is_distributed())
        user_set = set(opt.get('override', {}))
        restored = restore_checkpoint_options(opt, user_set)
        if restored:
            logging.info(
                f"Resuming {opt['init_model']} with its distillation options: "
                + ', '.join(f'{k}={v}' for k, v in sorted(restored.items()))
            )
        check_required(opt)
        if opt.get('recipe'):
            get_recipe(opt['recipe'])  # unknown name: error before loading anything
        config_terms = []
        if opt.get('distill_config'):
            config_terms = terms_from_config(
                read_config(opt['distill_config']), opt['distill_config']
            )
        self._load_teachers(opt)
        teacher = self.teacher
        model_file = opt.get('model_file')
        for t in self.teachers:
            if model_file and os.path.realpath(model_file) == os.path.realpath(t.path):
                raise DistillationError(
                    f'--model-file {model_file} is the teacher itself: give the '
                    'student its own -mf path (the teacher is never written)'
                )
        if (
            opt.get('init_opt')
            and opt.get('init_model')
            and opt.get('init_model') == teacher.opt.get('init_model')
        ):
            logging.info(
                f"Ignoring init_model {opt['init_model']} inherited from "
                f"{opt['init_opt']}: it initialised the teacher, not the student"
            )
            opt['init_model'] = None

        if model_file and os.path.isfile(model_file + '.opt'):
            # ParlAI built these options from the saved student's .opt: complete.
            inherited = {}
        else:
            if opt.get('recipe'):
                applied = apply_recipe(opt, opt['recipe'], user_set, wide=self.wide)
                user_set |= set(applied)
                logging.info(f"Recipe {opt['recipe']}: {applied}")
                for problem in recipe_teacher_mismatches(opt['recipe'], teacher.opt):
                    logging.warning(f'Teacher differs from the recipe: {problem}')
            inherited = inherit_teacher_options(
                opt, teacher.opt, user_set, teacher.opt.get('dict_file')
            )
        if inherited:
            logging.info(
                'Student inherits from the teacher: '
                + ', '.join(f'{k}={v}' for k, v in sorted(inherited.items()))
            )

        layers = {stack: stack_layers(opt, stack) for stack in STACKS}
        teacher_layers = {
            'encoder': teacher.n_encoder_layers,
            'decoder': teacher.n_decoder_layers,
        }
        if self.wide:
            check_wide_student(opt, teacher.opt, layers, teacher_layers)
        if int(opt['embedding_size']) % int(opt['n_heads']):
            raise DistillationError(
                f"--embedding-size {opt['embedding_size']} is not a multiple of "
                f"--n-heads {opt['n_heads']}"
            )
        if (opt.get('attn_loss_type') or 'score_mse') in HEADWISE_ATTENTION_KINDS:
            check_attention_heads(
                int(opt['n_heads']),
                teacher.n_heads,
                {
                    k: float(opt.get(k) or 0)
                    for k in ('self_attn_loss_coeff', 'enc_dec_attn_loss_coeff')
                },
            )
        maps = self._layer_maps(opt, layers, teacher_layers)
        if opt.get('share_teacher_encoder'):
            check_shared_encoder(
                self.wide,
                len(self.teachers),
                layers['encoder'],
                teacher_layers['encoder'],
                self.init_layer_maps.get('encoder', []),
                bool(opt.get('copy_teacher_weights', True)),
            )
        plan = plan_from_options(
            opt,
            maps,
            student_width=int(opt['embedding_size']),
            teacher_width=teacher.width,
            narrow=not self.wide,
            heads=(int(opt['n_heads']), teacher.n_heads),
        )
        clash = {t.metric for t in config_terms} & {t.metric for t in plan.terms}
        if clash:
            raise DistillationError(
                f'--distill-config metric names {sorted(clash)} are already used by '
                'the command-line terms: rename them with metric:'
            )
        self.distill_plan = dataclasses.replace(
            plan, terms=plan.terms + tuple(config_terms)
        )
        self._open_teacher_cache(opt)
        return opt

    def _layer_maps(
        self, opt: Opt, layers: dict[str, int], teacher_layers: dict[str, int]
    ) -> dict[str, list[int]]:
        """Resolve, check, log and save (in ``opt``) the supervision and init maps."""
        layerwise = any(
            float(opt.get(k) or 0) > 0
            for k in (
                'hidden_loss_coeff',
                'self_attn_loss_coeff',
                'enc_dec_attn_loss_coeff',
            )
        )
        maps: dict[str, list[int]] = {}
        for stack in STACKS:
            key = f'{stack}_layer_map'
            if layerwise or opt.get(key) or self.wide:
                maps[stack] = parse_layer_map(
                    opt.get(key),
                    layers[stack],
                    teacher_layers[stack],
                    f'{stack}-layer-map',
                )
                opt[key] = format_layer_map(maps[stack])
            else:
                maps[stack] = []
        self.init_layer_maps = {}
        if self.wide:
            for stack in STACKS:
                key = f'{stack}_init_layer_map'
                self.init_layer_maps[stack] = parse_layer_map(
                    opt.get(key) or opt[f'{stack}_layer_map'],
                    layers[stack],
                    teacher_layers[stack],
                    f'{stack}-init-layer-map',
                )
                opt[key] = format_layer_map(self.init_layer_maps[stack])
        if layerwise or self.wide:
            init = (
                '; init ' + '; '.join(f'{s} {self.init_layer_maps[s]}' for s in STACKS)
                if self.wide
                else ''
            )
            logging.info(
                'Layer maps (student layer -> teacher layer): '
                + '; '.join(f'{s} {maps[s]}' for s in STACKS)
                + init
            )
        return maps
