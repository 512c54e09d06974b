"""Command-line options of the distillation agents, and what students inherit.

The flags of ParlAI's former ``projects/anti_scaling`` keep their names and
defaults; the rest are additions. A student inherits the teacher's dictionary,
architecture and text-processing options unless the command line sets them.
"""

from __future__ import annotations

import argparse
import os

from parlai.core.opt import Opt
from parlai.core.params import ParlaiParser

from ..errors import DistillationError
from ..loss_terms import KIND_OPTIONS, LOSS_TERMS
from ..losses.fused_output import DEFAULT_CHUNK_SIZE
from ..model_files import ZOO_PREFIXES


class _TeacherModelAction(argparse._StoreAction):
    """Store ``--teacher-model`` and point ``--dict-file`` at the teacher's dictionary.

    This happens while arguments are parsed, before ``parlai train_model`` would
    build a new dictionary from the task data: the student must use the
    teacher's. A ``--dict-file`` given on the command line still wins.
    """

    def __call__(self, parser, namespace, values, option_string=None):  # noqa: ANN001
        setattr(namespace, self.dest, values)
        if not values:
            return
        paths = teacher_paths(values)
        for path in paths:
            if not path.startswith(ZOO_PREFIXES) and not os.path.isfile(
                os.path.expanduser(path)
            ):
                raise DistillationError(
                    f'teacher model file not found: {path} (give --teacher-model '
                    'the path of a trained ParlAI model file, or a zoo: path)'
                )
        if getattr(namespace, 'dict_file', None) is None:
            namespace.dict_file = paths[0] + '.dict'


def teacher_paths(value: str) -> list[str]:
    """The teacher files of ``--teacher-model`` (one, or several comma-separated)."""
    return [p.strip() for p in str(value).split(',') if p.strip()]


def add_distillation_args(
    parser: ParlaiParser, wide: bool, partial_opt: dict | None = None
) -> None:
    """Add the distillation flags to ``parser`` (``wide``: layer-removal students)."""
    group = parser.add_argument_group('Distillation Arguments')
    group.add_argument(
        '--teacher-model',
        type=str,
        default=None,
        action=_TeacherModelAction,
        help='Teacher model file (or zoo: path). The student inherits its '
        'dictionary and, unless set on the command line, its architecture and '
        'text-processing options.',
    )
    for term in LOSS_TERMS:
        group.add_argument(
            term.flag, type=float, default=term.default, help=term.help()
        )
    group.add_argument(
        '--recipe',
        type=str,
        default=None,
        help='A named set of student shape, layer maps and loss coefficients '
        '(python -m anti_scaling.scripts.zoo list), or a recipe file (.json/.yaml, e.g. '
        'written by python -m anti_scaling.scripts.search); flags on the command '
        'line win.',
    )
    group.add_argument(
        '--distill-temperature',
        type=float,
        default=1.0,
        help='Softmax temperature T of pred_loss (scaled by T^2).',
    )
    for option in KIND_OPTIONS:
        group.add_argument(
            option.flag,
            type=str,
            default=option.default,
            choices=option.names,
            help=option.help(),
        )
    group.add_argument(
        '--jsd-beta',
        type=float,
        default=0.5,
        help='Mixing weight beta of --pred-loss-type jsd (0: forward KL, 1: reverse KL).',
    )
    group.add_argument(
        '--skew-alpha',
        type=float,
        default=0.1,
        help='Skew alpha of --pred-loss-type skew_kl / skew_reverse_kl, in [0, 1) '
        '(0: plain forward / reverse KL).',
    )
    group.add_argument(
        '--taid-start',
        type=float,
        default=0.4,
        help='--pred-loss-type taid: interpolation t at the first step (0: the '
        'student\'s own distribution, 1: the teacher\'s).',
    )
    group.add_argument(
        '--taid-end',
        type=float,
        default=1.0,
        help='--pred-loss-type taid: interpolation t at the end of the schedule.',
    )
    group.add_argument(
        '--taid-steps',
        type=int,
        default=None,
        help='--pred-loss-type taid: steps over which t rises linearly from '
        '--taid-start to --taid-end (default: --max-train-steps).',
    )
    group.add_argument(
        '--taid-adaptive',
        type='bool',
        default=True,
        help='--pred-loss-type taid: also raise t faster while the objective falls '
        'quickly (TAID\'s momentum update); the linear schedule stays a floor.',
    )
    group.add_argument(
        '--relation-heads',
        type=int,
        default=None,
        help='Relation heads of --attn-loss-type minilmv2 (default: the teacher\'s '
        'head count); must divide both widths.',
    )
    group.add_argument(
        '--distill-config',
        type=str,
        default=None,
        help='JSON or YAML file of extra terms mapping student modules to teacher '
        'modules (see docs/methods.md); added to the terms the coefficients give.',
    )
    group.add_argument(
        '--intermediate-steps',
        type=int,
        default=0,
        help='Two-step distillation: only intermediate terms for this many training '
        'steps, then only the task and prediction terms (0: off).',
    )
    group.add_argument(
        '--handover-steps',
        type=int,
        default=0,
        help='Hand over from the teacher to the labels: every distillation term\'s '
        'weight falls linearly to 0 at this training step, after which the student '
        'learns from the labels alone (0: off).',
    )
    group.add_argument(
        '--distill-temperature-max',
        type=float,
        default=None,
        help='Annealing-KD: start at this temperature and decrease linearly to '
        '--distill-temperature over --temperature-anneal-steps steps.',
    )
    group.add_argument(
        '--temperature-anneal-steps',
        type=int,
        default=0,
        help='Steps over which the temperature is annealed (see --distill-temperature-max).',
    )
    group.add_argument(
        '--teacher-weights',
        type=str,
        default=None,
        help='With several comma-separated --teacher-model files: their weights in '
        'the averaged soft targets (default: equal).',
    )
    group.add_argument(
        '--intermediate-teacher',
        type=int,
        default=0,
        help='With several teachers: the index of the one that intermediate terms, '
        'layer maps and inherited options come from.',
    )
    group.add_argument(
        '--teacher-cache',
        type=str,
        default=None,
        help='Read the prediction targets from a teacher-output cache (built with '
        'python -m anti_scaling.scripts.cache_teacher_outputs) instead of running '
        'the teacher; only the task and forward-KL prediction terms can be used.',
    )
    group.add_argument(
        '--fused-prediction',
        type='bool',
        default=False,
        help='While training, compute the student\'s output layer, the task loss and '
        'the prediction term together, --prediction-chunk-size label tokens at a '
        'time, so that no [tokens x vocabulary] tensor of the whole batch is kept '
        '(same values and gradients; less memory).',
    )
    group.add_argument(
        '--prediction-chunk-size',
        type=int,
        default=DEFAULT_CHUNK_SIZE,
        help='--fused-prediction: label tokens whose logits exist at once.',
    )
    group.add_argument(
        '--freeze-encoder',
        type='bool',
        default=False,
        help='Do not train the student encoder (nor, since ParlAI ties them, the '
        'token embeddings and output layer); it runs without dropout.',
    )
    group.add_argument(
        '--on-policy-fraction',
        type=float,
        default=0.0,
        help='GKD on-policy distillation: share of training batches whose labels '
        'are replaced by replies sampled from the current student; the teacher '
        'scores them and only the prediction and intermediate terms are used.',
    )
    group.add_argument(
        '--on-policy-temperature',
        type=float,
        default=1.0,
        help='Sampling temperature of on-policy replies.',
    )
    group.add_argument(
        '--on-policy-max-length',
        type=int,
        default=32,
        help='Maximum length in tokens of on-policy replies.',
    )
    group.add_argument(
        '--on-policy-topk',
        type=int,
        default=0,
        help='Sample on-policy replies from the top-k tokens only (0: all tokens).',
    )
    group.add_argument(
        '--encoder-layer-map',
        type=str,
        default=None,
        help='Teacher encoder layer (0-based) that each student encoder layer learns '
        'from, comma-separated, strictly increasing, e.g. 1,3. Default: student layer '
        'i of n takes teacher layer floor((i+1)*N/n)-1.',
    )
    group.add_argument(
        '--decoder-layer-map',
        type=str,
        default=None,
        help='Same as --encoder-layer-map, for the decoder.',
    )
    if wide:
        group.add_argument(
            '--share-teacher-encoder',
            type='bool',
            default=False,
            help='The student keeps the teacher\'s whole encoder: it runs once per '
            'step and both decoders use its states (with --freeze-encoder true, the '
            'teacher\'s outputs are exactly its own).',
        )
        group.add_argument(
            '--copy-teacher-weights',
            type='bool',
            default=True,
            help='Initialise the student from the teacher: embeddings, every '
            'LayerNorm and the layers given by the init layer maps.',
        )
        group.add_argument(
            '--encoder-init-layer-map',
            type=str,
            default=None,
            help='Teacher encoder layers copied into the student encoder layers '
            '(default: the same as --encoder-layer-map).',
        )
        group.add_argument(
            '--decoder-init-layer-map',
            type=str,
            default=None,
            help='Teacher decoder layers copied into the student decoder layers '
            '(default: the same as --decoder-layer-map).',
        )
    accept_init_opt_keys(parser, (partial_opt or {}).get('init_opt'))


def accept_init_opt_keys(parser: ParlaiParser, init_opt: str | None) -> None:
    """Let ``--init-opt MODEL.opt`` work without ``--allow-missing-init-opts true``.

    A trained model's ``.opt`` holds keys that no parser option matches (its start
    time, its task's options...) and even ``allow_missing_init_opts: false``
    itself, so plain ParlAI refuses it. Declaring those keys as parser defaults
    makes ParlAI load them as it would with the flag; values on the command line
    still win.
    """
    parser.set_defaults(allow_missing_init_opts=True)
    if not init_opt:
        return
    try:
        file_opt = Opt.load_init(init_opt)
    except Exception:  # ParlAI reports a missing or broken file itself, later
        return
    known = {action.dest for action in parser._actions}
    unknown = {key: None for key in file_opt if key not in known}
    if unknown:
        parser.set_defaults(**unknown)


def distillation_option_names() -> set[str]:
    """Every option the distillation agents add (read from the real parser)."""
    parser = ParlaiParser(False, False)
    before = {action.dest for action in parser._actions}
    add_distillation_args(parser, wide=True)
    return {action.dest for action in parser._actions} - before
