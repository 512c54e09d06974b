"""The distillation mixin: what the four public agents add to ParlAI's generators.

It composes the pieces of this package: the teacher loader, option inheritance,
layer maps, the student checks and initialisation, the distillation plan,
state capture and the loss functions. The agents in
:mod:`anti_scaling.distillation` are this mixin plus a ParlAI base agent.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import parlai.utils.logging as logging
import torch
from parlai.core.metrics import AverageMetric
from parlai.core.opt import Opt
from parlai.core.params import ParlaiParser

from .. import losses
from ..compat import compatible_lr_schedulers
from ..errors import DistillationError, install_excepthook
from ..fileio import atomic_write
from ..zoo.recipes import apply_recipe, get_recipe, recipe_teacher_mismatches
from .capture import capture_states
from .evaluate import evaluate_plan
from .layer_maps import format_layer_map, parse_layer_map
from .options import (
    add_distillation_args,
    check_required,
    inherit_teacher_options,
    restore_checkpoint_options,
    stack_layers,
)
from .plan import DistillPlan, plan_from_options
from .student import (
    PROJECTION_PREFIX,
    PROJECTIONS_ATTR,
    build_projections,
    check_attention_heads,
    check_wide_student,
    copy_teacher_weights,
)
from .teacher import Teacher, load_teacher

STACKS = ('encoder', 'decoder')
# Metric names of the former implementation, in the order they are reported.
TERM_COEFFS = {
    'enc_loss': 'encoder_loss_coeff',
    'enc_hid_loss': 'hidden_loss_coeff',
    'dec_hid_loss': 'hidden_loss_coeff',
    'enc_emb_loss': 'embedding_loss_coeff',
    'dec_emb_loss': 'embedding_loss_coeff',
    'enc_self_attn_loss': 'self_attn_loss_coeff',
    'dec_self_attn_loss': 'self_attn_loss_coeff',
    'enc_dec_attn_loss': 'enc_dec_attn_loss_coeff',
}
# Checkpoint key listing the names of the optimised parameters in optimizer order,
# so that projections and their optimizer state can be stripped exactly.
OPTIMIZER_PARAM_NAMES = 'optimizer_param_names'


class DistillationMixin:
    """Distil a frozen teacher into this agent's (smaller) model.

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
            self.teacher: Teacher = shared['teacher']
            self.distill_plan: DistillPlan = shared['distill_plan']
            self.init_layer_maps: dict[str, list[int]] = shared['init_layer_maps']
        else:
            opt = self._prepare_distillation(opt)
        super().__init__(opt, shared)

    def share(self) -> dict[str, Any]:
        shared = super().share()
        shared['teacher'] = self.teacher
        shared['distill_plan'] = self.distill_plan
        shared['init_layer_maps'] = self.init_layer_maps
        return shared

    def build_model(self, *args, **kwargs):
        self._check_dictionary()
        model = super().build_model(*args, **kwargs)
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
        return model

    def build_lr_scheduler(self, states=None, hard_reset=False):  # noqa: ANN001
        with compatible_lr_schedulers():
            return super().build_lr_scheduler(states, hard_reset)

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

    def state_dict(self) -> dict[str, Any]:
        states = super().state_dict()
        if hasattr(self, 'optimizer') and 'model' in states:
            states[OPTIMIZER_PARAM_NAMES] = [
                name for name, p in self.model.named_parameters() if p.requires_grad
            ]
        return states

    def load_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Load a checkpoint; projections the current run does not use are dropped.

        Changing coefficients between runs (e.g. intermediate terms first, then
        predictions only) changes the set of projections; those missing from the
        checkpoint keep their fresh initialisation.
        """
        current = self.model.state_dict()
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
        """Task loss plus every enabled distillation term, weighted (``distill_loss``).

        Student states are captured only inside this forward pass; the teacher
        runs without gradients. Metrics: see the loss table of DESIGN.md.
        """
        plan = self.distill_plan
        if not plan.uses_teacher:
            return super().compute_loss(batch, return_output)
        with capture_states(self.model, plan.student_points) as student_states:
            task_loss, model_output = super().compute_loss(batch, return_output=True)
        teacher_states, teacher_logits = self._run_teacher(batch)

        context_mask = batch.text_vec != self.NULL_IDX
        label_mask = batch.label_vec != self.NULL_IDX
        projections = getattr(self.model, PROJECTIONS_ATTR, None)
        terms = evaluate_plan(
            plan,
            student_states,
            teacher_states,
            context_mask,
            label_mask,
            projections,
        )
        weights = {term.metric: term.coeff for term in plan.terms}
        student_logits = model_output[0]
        if plan.pred_coeff > 0:
            terms['pred_loss'] = losses.prediction_kl(
                student_logits, teacher_logits, label_mask, plan.temperature
            )
            weights['pred_loss'] = plan.pred_coeff

        total = plan.task_coeff * task_loss
        for name, value in terms.items():
            total = total + weights[name] * value.mean()
            self.record_local_metric(
                name, AverageMetric.many(value.total.tolist(), value.count.tolist())
            )
        if teacher_logits is not None:
            agreement = losses.argmax_agreement(
                student_logits, teacher_logits, label_mask
            )
            self.record_local_metric(
                'teacher_acc',
                AverageMetric.many(agreement.total.tolist(), agreement.count.tolist()),
            )
        self.record_local_metric(
            'distill_loss', AverageMetric.many([total.item()] * label_mask.size(0))
        )
        if return_output:
            return total, model_output
        return total

    def _run_teacher(self, batch):  # noqa: ANN001
        """Teacher forward pass (no gradients): captured states and output logits."""
        plan = self.distill_plan
        teacher = self.teacher.model
        with torch.no_grad(), capture_states(teacher, plan.teacher_points) as states:
            if plan.needs_teacher_decoder:
                logits = teacher(*self._model_input(batch), ys=batch.label_vec)[0]
            else:
                teacher.encoder(*self._encoder_input(batch))
                logits = None
        return states, logits

    # set-up ---------------------------------------------------------------------

    def _check_dictionary(self) -> None:
        """The student's dictionary (complete, fp16 padding included) is the teacher's."""
        teacher_dict = self.teacher.dict
        if self.dict.tok2ind != teacher_dict.tok2ind:
            raise DistillationError(
                f"the student dictionary ({self.opt.get('dict_file')}, "
                f'{len(self.dict)} tokens) differs from the teacher\'s '
                f"({self.teacher.opt.get('dict_file')}, {len(teacher_dict)} tokens): "
                'drop --dict-file to use the teacher\'s dictionary'
            )

    def _checkpoint_to_load(self) -> bool:
        """Whether ParlAI will load weights (resume or --init-model) after building."""
        for key in ('init_model', 'model_file'):
            path = self.opt.get(key)
            if path and os.path.isfile(path):
                return True
        return False

    def _prepare_distillation(self, opt: Opt) -> Opt:
        """Load the teacher, complete and check the student's options, plan the loss.

        Runs before ParlAI builds anything, so every bad input fails here with a
        one-line :class:`DistillationError` and nothing is written.
        """
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
        teacher = load_teacher(
            opt['teacher_model'],
            datapath=opt.get('datapath'),
            expected=self.teacher_family,
            excluded=self.teacher_excluded,
            overrides={'no_cuda': bool(opt.get('no_cuda', False))},
        )
        model_file = opt.get('model_file')
        if model_file and os.path.realpath(model_file) == os.path.realpath(
            teacher.path
        ):
            raise DistillationError(
                f'--model-file {model_file} is the teacher itself: give the student '
                'its own -mf path (the teacher is never written)'
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
        check_attention_heads(
            int(opt['n_heads']),
            teacher.n_heads,
            {
                k: float(opt.get(k) or 0)
                for k in ('self_attn_loss_coeff', 'enc_dec_attn_loss_coeff')
            },
        )

        layerwise = any(
            float(opt.get(k) or 0) > 0
            for k in ('hidden_loss_coeff', 'self_attn_loss_coeff')
        ) or (float(opt.get('enc_dec_attn_loss_coeff') or 0) > 0)
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
            logging.info(
                'Layer maps (student layer -> teacher layer): '
                + '; '.join(f'{s} {maps[s]}' for s in STACKS)
                + (
                    '; init '
                    + '; '.join(f'{s} {self.init_layer_maps[s]}' for s in STACKS)
                    if self.wide
                    else ''
                )
            )
        self.distill_plan = plan_from_options(
            opt,
            maps,
            student_width=int(opt['embedding_size']),
            teacher_width=teacher.width,
            narrow=not self.wide,
        )
        self.teacher = teacher
        return opt
