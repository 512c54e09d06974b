"""Everything a distillation run decides before ParlAI builds the student.

:func:`prepare_run` loads the teachers, completes and checks the student's
options (recipe, inheritance from the teacher, layer counts, heads), resolves
the layer maps and the plan of loss terms, and opens the teacher-output cache.
It runs before any model is built, so every bad input fails here with a
one-line :class:`DistillationError` and nothing is written. It needs no ParlAI
agent: give it the parsed options and the kind of student.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

import parlai.utils.logging as logging
from parlai.utils.distributed import is_distributed

from ..cache import TeacherOutputCache, open_for_run
from ..errors import DistillationError
from ..loss_terms import ATTENTION_KINDS
from ..parallel.backends import cuda_usable
from ..parallel.checks import check_parallel_options
from ..parallel.teacher_placement import (
    building_local_model,
    check_teacher_device,
    student_device,
    teacher_overrides,
)
from ..zoo.recipes import Recipe, apply_recipe, recipe_teacher_mismatches
from .config import read_config, terms_from_config
from .encoder_sharing import check_shared_encoder
from .inheritance import (
    inherit_teacher_options,
    restore_checkpoint_options,
    stack_layers,
)
from .layer_maps import resolve_layer_maps
from .option_checks import check_required, teacher_weights
from .options import teacher_paths
from .plan import DistillPlan, plan_from_options
from .recipe_files import resolve_recipe
from .student import check_attention_heads, check_wide_student
from .teacher import Teacher, load_teacher
from .teacher_targets import TeacherEnsemble

STACKS = ('encoder', 'decoder')


@dataclass(frozen=True)
class StudentKind:
    """Wide (layer removal, teacher-initialised) or narrow, and the teachers accepted."""

    wide: bool
    teacher_family: type
    teacher_excluded: tuple = ()


@dataclass
class RunSetup:
    """The teachers, the plan, the layer maps and the cache of one run."""

    teachers: TeacherEnsemble
    plan: DistillPlan
    layer_maps: dict[str, list[int]]
    init_layer_maps: dict[str, list[int]] = field(default_factory=dict)
    cache: TeacherOutputCache | None = None

    @property
    def teacher(self) -> Teacher:
        """The teacher that intermediate terms, layer maps and options come from."""
        return self.teachers.main


def _resuming(opt: dict) -> bool:
    """Whether ParlAI will load weights (resume or --init-model) after building."""
    return any(
        opt.get(key) and os.path.isfile(opt[key])
        for key in ('init_model', 'model_file')
    )


def load_teachers(opt: dict, kind: StudentKind) -> TeacherEnsemble:
    """The teachers of ``--teacher-model``: frozen, each built alone (never synced
    or wrapped for distributed training), on the student's device and precision.

    A teacher-output cache replaces the teachers' weights, except to initialise a
    new wide student from them.
    """
    weights_needed = not opt.get('teacher_cache') or (
        kind.wide and bool(opt.get('copy_teacher_weights', True)) and not _resuming(opt)
    )
    paths = teacher_paths(opt['teacher_model'])
    with building_local_model():
        teachers = [
            load_teacher(
                path,
                datapath=opt.get('datapath'),
                expected=kind.teacher_family,
                excluded=kind.teacher_excluded,
                overrides=teacher_overrides(opt),
                weights=weights_needed,
                half=bool(opt.get('fp16')) and cuda_usable(opt),
            )
            for path in paths
        ]
    for teacher in teachers:
        if teacher.model is not None:
            check_teacher_device(teacher.model, student_device(opt), teacher.path)
    index = int(opt.get('intermediate_teacher') or 0)
    if not 0 <= index < len(paths):
        raise DistillationError(
            f'--intermediate-teacher {index}: there are {len(paths)} teachers '
            f'(valid indices 0..{len(paths) - 1})'
        )
    ensemble = TeacherEnsemble(teachers, teacher_weights(opt, len(paths)), index)
    for other in teachers:
        if other.dict.tok2ind != ensemble.main.dict.tok2ind:
            raise DistillationError(
                f'teachers {ensemble.main.path} and {other.path} have different '
                'dictionaries: averaged soft targets need one shared vocabulary'
            )
    return ensemble


def check_fp16_dictionary(opt: dict, teacher: Teacher) -> None:
    """``--fp16`` pads the student's dictionary to a multiple of 8 tokens (ParlAI
    adds ``__FP16_PAD_i__`` tokens, also on a CPU); the teacher's must be padded
    the same way, or their outputs cannot be compared token for token."""
    from parlai.utils.torch import FP16_PAD_SIZE

    student_pads = bool(opt.get('fp16') or opt.get('force_fp16_tokens'))
    size = len(teacher.dict)
    if student_pads and size % FP16_PAD_SIZE:
        raise DistillationError(
            f'--fp16 true pads the student dictionary to a multiple of '
            f'{FP16_PAD_SIZE} tokens, but teacher {teacher.path} has {size} tokens '
            'and no padding (it was trained without --fp16): train the student '
            'without --fp16, or use a teacher trained with --fp16 true or '
            '--force-fp16-tokens true'
        )


def check_cache_compatible(opt: dict, plan: DistillPlan, teachers: int) -> None:
    """``--teacher-cache`` gives forward-KL targets only: refuse anything more."""
    problems = []
    if plan.module_terms:
        problems.append(
            'intermediate terms need the live teacher (set '
            + ', '.join(sorted({t.metric for t in plan.module_terms}))
            + ' to 0)'
        )
    prediction = plan.prediction
    if prediction is not None and prediction.pairs[0].objective != 'kl':
        problems.append(
            f'--pred-loss-type {prediction.pairs[0].objective} (only kl has a top-k '
            'form)'
        )
    if teachers > 1:
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


def _complete_student_options(
    opt: dict, teacher: Teacher, user_set: set[str], wide: bool, recipe: Recipe | None
) -> None:
    """Apply the recipe and inherit the teacher's options (a new student only)."""
    model_file = opt.get('model_file')
    if model_file and os.path.isfile(model_file + '.opt'):
        return  # ParlAI built these options from the saved student's .opt
    if recipe is not None:
        applied = apply_recipe(opt, recipe, user_set, wide=wide)
        user_set |= set(applied)
        logging.info(f'Recipe {recipe.name}: {applied}')
        for problem in recipe_teacher_mismatches(recipe, teacher.opt):
            logging.warning(f'Teacher differs from the recipe: {problem}')
    inherited = inherit_teacher_options(
        opt, teacher.opt, user_set, teacher.opt.get('dict_file')
    )
    if inherited:
        logging.info(
            'Student inherits from the teacher: '
            + ', '.join(f'{k}={v}' for k, v in sorted(inherited.items()))
        )


def _check_paths(opt: dict, teachers: TeacherEnsemble) -> None:
    model_file = opt.get('model_file')
    for t in teachers.teachers:
        if model_file and os.path.realpath(model_file) == os.path.realpath(t.path):
            raise DistillationError(
                f'--model-file {model_file} is the teacher itself: give the '
                'student its own -mf path (the teacher is never written)'
            )
    init_model = opt.get('init_model')
    if (
        opt.get('init_opt')
        and init_model
        and init_model == teachers.main.opt.get('init_model')
    ):
        logging.info(
            f'Ignoring init_model {init_model} inherited from {opt["init_opt"]}: '
            'it initialised the teacher, not the student'
        )
        opt['init_model'] = None


def prepare_run(opt: dict, kind: StudentKind) -> RunSetup:
    """Load the teachers, complete and check the student's options, plan the loss.

    ``opt`` (ParlAI's parsed options) is completed in place: inherited options,
    recipe values and the resolved layer maps are written into it, so they are
    saved in the student's ``.opt``.
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
    recipe = resolve_recipe(opt['recipe']) if opt.get('recipe') else None
    config_terms = []
    if opt.get('distill_config'):
        config_terms = terms_from_config(
            read_config(opt['distill_config']), opt['distill_config']
        )
    teachers = load_teachers(opt, kind)
    teacher = teachers.main
    _check_paths(opt, teachers)
    _complete_student_options(opt, teacher, user_set, kind.wide, recipe)
    check_fp16_dictionary(opt, teacher)

    layers = {stack: stack_layers(opt, stack) for stack in STACKS}
    teacher_layers = {
        'encoder': teacher.n_encoder_layers,
        'decoder': teacher.n_decoder_layers,
    }
    if kind.wide:
        check_wide_student(opt, teacher.opt, layers, teacher_layers)
    if int(opt['embedding_size']) % int(opt['n_heads']):
        raise DistillationError(
            f"--embedding-size {opt['embedding_size']} is not a multiple of "
            f"--n-heads {opt['n_heads']}"
        )
    attention_kind = opt.get(ATTENTION_KINDS.dest) or ATTENTION_KINDS.default
    if ATTENTION_KINDS.kind(attention_kind).headwise:
        check_attention_heads(
            int(opt['n_heads']),
            teacher.n_heads,
            {
                k: float(opt.get(k) or 0)
                for k in ('self_attn_loss_coeff', 'enc_dec_attn_loss_coeff')
            },
        )
    maps, init_maps = resolve_layer_maps(opt, layers, teacher_layers, kind.wide)
    if opt.get('share_teacher_encoder'):
        check_shared_encoder(
            kind.wide,
            len(teachers.teachers),
            layers['encoder'],
            teacher_layers['encoder'],
            init_maps.get('encoder', []),
            bool(opt.get('copy_teacher_weights', True)),
        )
    plan = plan_from_options(
        opt,
        maps,
        student_width=int(opt['embedding_size']),
        teacher_width=teacher.width,
        narrow=not kind.wide,
        heads=(int(opt['n_heads']), teacher.n_heads),
    )
    clash = {t.metric for t in config_terms} & {t.metric for t in plan.terms}
    if clash:
        raise DistillationError(
            f'--distill-config metric names {sorted(clash)} are already used by '
            'the command-line terms: rename them with metric:'
        )
    plan = dataclasses.replace(plan, terms=plan.terms + tuple(config_terms))
    cache = None
    if opt.get('teacher_cache'):
        check_cache_compatible(opt, plan, len(teachers.teachers))
        cache = open_for_run(
            opt['teacher_cache'], teacher.path, opt.get('dict_file'), opt
        )
        logging.info(
            f"Prediction targets come from the teacher cache {opt['teacher_cache']}"
        )
    return RunSetup(teachers, plan, maps, init_maps, cache)
