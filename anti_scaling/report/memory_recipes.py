"""Per-rank memory of a recipe's distillation run, line by line, with formulas.

Combines the formulas of :mod:`.memory` (the student's training step) and
:mod:`.memory_terms` (the distillation terms) for a recipe of
:mod:`anti_scaling.zoo.recipes`, its teacher in ``fp16``, and four ways to run
it (:data:`VARIANTS`). The peak is the largest of three phases, on top of what
persists between steps (weights, optimizer states, and under ``--fp16-impl
safe`` the float32 master weights and gradients):

- end of the forward pass: saved activations (student and terms), the tensors
  held until the loss, the prediction term's working set;
- backward pass: at most the saved activations plus every gradient (each
  activation is freed as the gradients of its layer are made);
- optimizer step: the gradients plus the step's temporaries
  (:func:`_optimizer_step_bytes`).

Not counted: the CUDA context, the caching allocator's unused reserve, the
teacher's own forward pass (no gradients; before the student's, it needs one
layer's working memory next to its captured targets).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..agents.layer_maps import parse_layer_map
from ..agents.plan import DistillPlan, plan_from_options
from ..errors import DistillationError
from ..loss_terms import COEFFICIENTS
from ..zoo.recipes import get_recipe
from .memory import (
    Dropouts,
    ModelShape,
    StepBatch,
    logits_bytes,
    precision,
    step_activation_bytes,
    training_state_bytes,
)
from .memory_terms import term_memory, topk_memory

#: The ways to run a recipe: its terms with a live teacher; only the task and
#: prediction terms (what a cache can give) with a live teacher, or from a top-k
#: cache; a shared encoder (wide recipes), trained or frozen.
VARIANTS = {
    'recipe': 'the recipe, live teacher',
    'prediction': 'task + pred_loss only, live teacher',
    'cache': 'task + pred_loss only, teacher cache (top-k)',
    'shared': '--share-teacher-encoder',
    'shared_frozen': '--share-teacher-encoder --freeze-encoder',
}


@dataclass(frozen=True)
class Setting:
    """The run: per-rank batch, half-precision implementation (``safe``,
    ``mem_efficient``, or ``fp32`` without ``--fp16``), device, BlenderBot's
    vocabulary, positions and dropouts, and the cache's ``top_k``."""

    batch: StepBatch = StepBatch(16, 128, 128)
    mode: str = 'safe'
    device: str = 'cuda'
    vocab_size: int = 8008
    n_positions: int = 128
    dropouts: Dropouts = Dropouts(0.1, 0.0, 0.0)
    top_k: int = 32


@dataclass
class Estimate:
    """Named figures in bytes, each with its formula; ``peak`` and its phase."""

    lines: dict[str, tuple[int, str]] = field(default_factory=dict)
    peak: int = 0
    phase: str = ''

    def add(self, name: str, value: int, formula: str) -> int:
        self.lines[name] = (int(value), formula)
        return int(value)


def shapes(recipe_name: str, setting: Setting) -> tuple[ModelShape, ModelShape]:
    """(teacher, student) shapes of a recipe, with BlenderBot's text options."""
    recipe = get_recipe(recipe_name)

    def shape(sizes: dict) -> ModelShape:
        return ModelShape(
            n_encoder_layers=sizes['n_encoder_layers'],
            n_decoder_layers=sizes['n_decoder_layers'],
            embedding_size=sizes['embedding_size'],
            ffn_size=sizes['ffn_size'],
            n_heads=sizes['n_heads'],
            vocab_size=setting.vocab_size,
            n_positions=setting.n_positions,
        )

    return shape(recipe.teacher_shape), shape(recipe.student_shape)


def recipe_plan(recipe_name: str, variant: str) -> DistillPlan:
    """The plan the agents build for the recipe (``variant`` as in :data:`VARIANTS`)."""
    recipe = get_recipe(recipe_name)
    opt = {k: v.default for k, v in COEFFICIENTS.items()}
    opt.update(recipe.options)
    if variant in ('prediction', 'cache'):
        opt.update(
            {
                k: 0.0
                for k in COEFFICIENTS
                if k not in ('task_loss_coeff', 'pred_loss_coeff')
            }
        )
    if variant.startswith('shared'):
        if not recipe.wide:
            raise DistillationError(
                f'--share-teacher-encoder needs a wide recipe, not {recipe.name}'
            )
        opt['share_teacher_encoder'] = True
    teacher, student = recipe.teacher_shape, recipe.student_shape
    maps = {
        stack: parse_layer_map(
            opt.get(f'{stack}_layer_map'),
            student[f'n_{stack}_layers'],
            teacher[f'n_{stack}_layers'],
            f'{stack}-layer-map',
        )
        for stack in ('encoder', 'decoder')
    }
    return plan_from_options(
        opt,
        maps,
        student['embedding_size'],
        teacher['embedding_size'],
        narrow=not recipe.wide,
        heads=(student['n_heads'], teacher['n_heads']),
    )


def estimate(recipe_name: str, setting: Setting, variant: str = 'recipe') -> Estimate:
    """Per-rank memory of one training step of ``recipe_name`` run as ``variant``."""
    if variant not in VARIANTS:
        raise DistillationError(
            f'unknown variant {variant!r}: use one of {", ".join(VARIANTS)}'
        )
    teacher, student = shapes(recipe_name, setting)
    plan = recipe_plan(recipe_name, variant)
    half = setting.mode != 'fp32'
    p_s = precision('fp16' if half else 'fp32', setting.device)
    b = setting.batch
    out = Estimate()
    # the teacher follows the student's precision
    e_t = p_s.element
    teacher_weights = 0 if variant == 'cache' else e_t * teacher.parameters()
    out.add(
        'teacher weights',
        teacher_weights,
        f'{e_t} P_T, P_T = {teacher.parameters():,}',
    )

    projections = sum(i * o + o for i, o in plan.projections.values())
    frozen_encoder = variant == 'shared_frozen'
    encoder_params = _trainable_encoder(student) if frozen_encoder else 0
    trainable = student.trainable_parameters() + projections - encoder_params
    frozen = student.parameters() + projections - trainable
    state = training_state_bytes(trainable, frozen, setting.mode)
    persistent = teacher_weights
    persistent += out.add(
        'student weights',
        state['weights'],
        f'{2 if half else 4} P_S, P_S = {student.parameters() + projections:,}'
        + (f' (projections {projections:,})' if projections else ''),
    )
    persistent += out.add(
        'Adam (AMSGrad) states, float32',
        state['optimizer states'],
        f'12 P_train, P_train = {trainable:,}',
    )
    if setting.mode == 'safe':
        persistent += out.add(
            'fp32 master weights + gradients (safe)',
            state['master weights'] + state['master gradients'],
            '(4 + 4) P_train',
        )
    gradients = out.add(
        'student gradients', state['gradients'], f'{2 if half else 4} P_train'
    )
    out.add(
        'DDP gradient buckets (several GPUs; not in the peak)',
        state['gradients'],
        f'{2 if half else 4} P_train',
    )

    step = step_activation_bytes(student, b, p_s, setting.dropouts)
    if frozen_encoder:
        step = _without_encoder_training(step, student, b, p_s)
    saved = out.add(
        'student activations (saved for backward)',
        sum(step.values()),
        'embeddings + layers + outputs + ParlAI loss (formulas below)',
    )
    logits = logits_bytes(student, b, p_s)
    if variant == 'cache':
        terms = topk_memory(b, student.vocab_size, setting.top_k)
    else:
        terms = term_memory(plan, student, teacher, b, p_s.element, e_t)
    saved += out.add(
        'distillation terms (saved for backward)',
        terms.saved,
        _saved_formula(variant),
    )
    held = out.add(
        'held until the loss: teacher targets',
        terms.teacher_targets,
        _targets_formula(variant),
    )
    held += out.add(
        'held until the loss: student scores + logits',
        terms.student_scores + logits,
        'B h Q K e_S per score pair; logits B T V e_S',
    )
    work = out.add('prediction term working set', terms.prediction_work, '4 N V 4')
    step_temp = _optimizer_step_bytes(
        setting, trainable, _largest_parameter(student, plan, frozen_encoder)
    )
    phases = {
        'forward': saved + held + work,
        'backward': saved + gradients,
        'optimizer step': gradients + step_temp,
    }
    out.phase = max(phases, key=phases.get)
    out.peak = persistent + phases[out.phase]
    return out


def _largest_parameter(shape: ModelShape, plan: DistillPlan, frozen: bool) -> int:
    """Elements of the largest trained tensor: token embeddings, an FFN or a
    projection matrix."""
    d = shape.embedding_size
    sizes = [d * shape.ffn_size, d * d] + [i * o for i, o in plan.projections.values()]
    if not frozen:
        sizes.append(shape.vocab_size * d)
    return max(sizes)


def _optimizer_step_bytes(setting: Setting, trainable: int, largest: int) -> int:
    """Temporaries of the optimizer step: ``torch.optim.Adam`` runs its ``foreach``
    form on CUDA (``sqrt(v)`` of every parameter at once, ``4 P``) and its loop on
    the CPU (``sqrt(v)`` and its quotient for one tensor, ``8 p_max``);
    ``MemoryEfficientFP16Adam`` casts one tensor's gradient and weight to float32
    and makes its denominator, ``12 p_max``."""
    if setting.mode == 'mem_efficient':
        return 12 * largest
    return 4 * trainable if setting.device == 'cuda' else 8 * largest


def _trainable_encoder(shape: ModelShape) -> int:
    """Trainable parameters ``--freeze-encoder`` freezes: the encoder's layers, its
    final LayerNorm, learned positions, and the token embeddings it shares."""
    d = shape.embedding_size
    return (
        shape.n_encoder_layers * shape.encoder_layer_parameters()
        + shape.vocab_size * d
        + (2 * d if shape.variant != 'aiayn' else 0)
        + (shape.n_positions * d if shape.learn_positional_embeddings else 0)
        + shape.n_segments * d
    )


def _without_encoder_training(
    step: dict[str, int], shape: ModelShape, batch: StepBatch, p
) -> dict[str, int]:
    """A frozen encoder keeps nothing for backward but its output (still kept by the
    encoder attention); with the token embeddings it shares frozen, the decoder's
    embedding lookup and dropout keep nothing either, and the output layer no
    longer keeps its input (only the weight's gradient needed it)."""
    d = shape.embedding_size
    step = dict(step)
    step['encoder embeddings'] = 0
    step['encoder layers'] = 0
    step['encoder output'] = batch.size * batch.text_length * d * p.element
    step['decoder embeddings'] = 0
    step['decoder output'] -= batch.size * batch.label_length * d * p.element
    return step


def _saved_formula(variant: str) -> str:
    if variant == 'cache':
        return '2 N V 4 + N k (8 + 4) + 30 N (top-k KL)'
    return (
        'per state pair 2 N d_T 4 (+ N d_S e_S projected), per score pair '
        '4 B h Q K, KL 2 N V 4; + 20 N per pair'
    )


def _targets_formula(variant: str) -> str:
    if variant == 'cache':
        return 'B T k (8 + 4) + 4 B T (cached ids, log-probs, rest)'
    return 'B L d_T e_T per state, B h Q K e_T per score map; logits B T V e_T + 8 B T'
