"""The search experiment: search the chitchat teacher's students, train the chosen
ones in full beside no-teacher baselines, and check the recipe on a second corpus.

    python -m experiments.search_experiment search  --teacher T --out runs/search
    python -m experiments.search_experiment full    --teacher T --out runs/search \\
        --recipe runs/search/search/recipes/trial-0007.json [--recipe ...]
    python -m experiments.search_experiment corpus2 --out runs/search --recipe R
    python -m experiments.search_experiment report  --teacher T --out runs/search
    python -m experiments.search_experiment curves  --out runs/search

Every step runs ``parlai`` or our scripts in a subprocess (the command is printed,
appended to ``OUT/commands.sh`` and logged in ``OUT/logs/STEP.log``) and is
skipped when it finished earlier (``--force`` reruns it), as in
:mod:`experiments.chitchat_experiment`, whose optimisation and validation flags
every run here shares. Results: ``OUT/curves.json`` (validation curves of every
trained model), ``OUT/curves_*.png``, the report folders; docs/search_results.md
is written from them.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys

from anti_scaling.agents.recipe_files import resolve_recipe
from anti_scaling.errors import DistillationError, install_excepthook
from anti_scaling.fileio import atomic_write
from experiments.chitchat_experiment import (
    NARROW,
    NO_TEACHER,
    OPTIM_FLAGS,
    TASK,
    Layout,
    Runner,
    parlai,
    plain_copy_command,
)

SECOND_TASK = 'anti_scaling.tasks.chatterbot'
SHAPE = (
    'n_encoder_layers',
    'n_decoder_layers',
    'embedding_size',
    'ffn_size',
    'n_heads',
)
#: The search space: students 5x faster or so (1-2 layers a stack, narrow widths of
#: a half or a quarter of the teacher's), every prediction objective the agents
#: offer, optional hidden and cross-attention terms.
SPACE = {
    'kind': ['wide', 'narrow'],
    'n_encoder_layers': {'low': 1, 'high': 2},
    'n_decoder_layers': {'low': 1, 'high': 2},
    'embedding_size': [128, 192, 256],
    'ffn_ratio': 4,
    'n_heads': 4,
    'task_loss_coeff': 1,
    'pred_loss_coeff': {'low': 1, 'high': 64, 'log': True},
    'distill_temperature': [1, 2],
    'pred_loss_type': ['kl', 'skew_kl', 'jsd', 'taid'],
    'hidden_loss_coeff': [0, 0.25, 1],
    'encoder_loss_coeff': 0,
    'embedding_loss_coeff': 0,
    'self_attn_loss_coeff': 0,
    'enc_dec_attn_loss_coeff': [0, 4],
}
#: Validation during full training: perplexity on a capped valid set, a learning
#: curve point every ``--valid-steps``; the best model is kept.
VALID = (
    '--skip-generation',
    'true',
    '-vmt',
    'ppl',
    '-vmm',
    'min',
    '--validation-max-exs',
    '1000',
    '--save-after-valid',
    'true',
    '--log-every-n-secs',
    '120',
)


def shape_flags(options: dict) -> list[str]:
    """The recipe's size options as flags (for the same-shape baseline)."""
    flags = []
    for key in SHAPE:
        if key in options:
            flags += ['--' + key.replace('_', '-'), str(options[key])]
    return flags


def train_run(
    task: str, layout: Layout, model: str, model_file: str, flags: list[str]
) -> list[str]:
    return parlai(
        'train_model', '-t', task, '-dp', layout.datapath, '-m', model, '-mf',
        model_file, *OPTIM_FLAGS, *VALID, *flags,
    )  # fmt: skip


def budget_flags(steps: int, every: int) -> list[str]:
    # ParlAI stops at --max-train-steps before validating: one more step validates it
    return ['--max-train-steps', str(steps + 1), '-vstep', str(every)]


def step_search(args: argparse.Namespace, runner: Runner, layout: Layout) -> None:
    space = os.path.join(layout.out, 'space.json')
    os.makedirs(layout.out, exist_ok=True)
    atomic_write(space, lambda fh: json.dump(SPACE, fh, indent=1))
    argv = [
        sys.executable, '-m', 'anti_scaling.scripts.search', '--teacher',
        args.teacher, '-t', TASK, '-dp', layout.datapath, '--out',
        os.path.join(layout.out, 'search'), '--trials', str(args.trials), '--steps',
        str(args.search_steps), '--valid-every', str(args.search_steps // 3),
        '--threads', '1', '--space', space, '--target-speedup', '5', '--seed', '0',
        '--train-args', '--warmup-updates 50', '--keep-models',
        '--train-baselines', 'chosen',
    ]  # fmt: skip
    runner.step('search', argv)


def step_full(args: argparse.Namespace, runner: Runner, layout: Layout) -> None:
    """Each recipe's student and its same-shape no-teacher baseline, equal budget."""
    for path in args.recipe:
        recipe = resolve_recipe(path)
        name = os.path.splitext(os.path.basename(path))[0]
        budget = budget_flags(args.full_steps, args.valid_steps)
        student = layout.student(f'full/{name}')
        runner.step(
            f'full-{name}',
            train_run(
                TASK, layout, recipe.agent, student,
                ['--teacher-model', args.teacher, '--recipe', path, *budget,
                 *args.extra],
            ),
            fresh=os.path.dirname(student),
        )  # fmt: skip
        baseline = layout.student(f'full/{name}-baseline')
        runner.step(
            f'full-{name}-baseline',
            train_run(
                TASK, layout, NARROW, baseline,
                ['--teacher-model', args.teacher, *shape_flags(recipe.options),
                 *NO_TEACHER, *budget],
            ),
            fresh=os.path.dirname(baseline),
        )  # fmt: skip


#: The variants compared on the second corpus, beside the baseline: the recipe as
#: the search chose it, then with the prediction term's weight balanced against
#: the labels, and handing over from the teacher to the labels halfway.
def corpus2_variants(steps: int) -> dict[str, list[str]]:
    return {
        'recipe': [],
        'balanced': ['--pred-loss-coeff', '1'],
        'handover': ['--handover-steps', str(steps // 2)],
        'balanced-handover': [
            '--pred-loss-coeff', '1', '--handover-steps', str(steps // 2)
        ],
    }  # fmt: skip


def step_corpus2(args: argparse.Namespace, runner: Runner, layout: Layout) -> None:
    """A teacher of the chitchat teacher's shape on the second corpus, then the
    first recipe's student (and variants), the other recipes' students (same shape)
    and the baseline, several seeds."""
    from experiments.chitchat_experiment import DICT_FLAGS, TEACHER_ARCH

    out = os.path.join(layout.out, 'corpus2')
    dict_file = os.path.join(out, 'dict')
    teacher = os.path.join(out, 'teacher', 'model')
    runner.step(
        'corpus2-dict',
        parlai('build_dict', '-t', SECOND_TASK, '-dp', layout.datapath,
               '--dict-file', dict_file, *DICT_FLAGS),
    )  # fmt: skip
    runner.step(
        'corpus2-teacher',
        train_run(
            SECOND_TASK, layout, 'transformer/generator', teacher,
            ['--dict-file', dict_file, *DICT_FLAGS, *TEACHER_ARCH,
             *budget_flags(args.corpus2_teacher_steps, args.corpus2_valid_steps)],
        ),
        fresh=os.path.dirname(teacher),
    )  # fmt: skip
    recipe = resolve_recipe(args.recipe[0])
    budget = budget_flags(args.corpus2_steps, args.corpus2_valid_steps)
    for seed in args.seeds:
        runs = {'baseline': (NARROW, [*shape_flags(recipe.options), *NO_TEACHER])}
        variants = corpus2_variants(args.corpus2_steps)
        for name in ('recipe', 'balanced'):
            runs[name] = (recipe.agent, ['--recipe', args.recipe[0], *variants[name]])
        # more recipes of the same shape (e.g. the search's choice), as they are
        for path in args.recipe[1:]:
            name = os.path.splitext(os.path.basename(path))[0]
            runs[name] = (resolve_recipe(path).agent, ['--recipe', path])
        for name in ('handover', 'balanced-handover'):
            runs[name] = (recipe.agent, ['--recipe', args.recipe[0], *variants[name]])
        for name, (agent, flags) in runs.items():
            model = os.path.join(out, f'{name}-s{seed}', 'model')
            runner.step(
                f'corpus2-{name}-s{seed}',
                train_run(
                    SECOND_TASK, layout, agent, model,
                    ['--teacher-model', teacher, *flags, *budget, '--seed',
                     str(seed)],
                ),
                fresh=os.path.dirname(model),
            )  # fmt: skip


def valid_curve(model_file: str) -> list[dict]:
    """``[{step, ppl, token_acc}]`` of every validation ParlAI logged for a model."""
    with open(model_file + '.trainstats') as fh:
        reports = json.load(fh).get('valid_reports', [])
    return [
        {
            'step': r.get('total_train_updates'),
            'ppl': r.get('ppl'),
            'token_acc': r.get('token_acc'),
        }
        for r in reports
    ]


def curves_table(curves: dict[str, list[dict]]) -> str:
    """Markdown: per model, the best validation (kept by ``--save-after-valid``), the
    token accuracy there, and the last validation of the budget."""
    lines = [
        '| model | best ppl (step) | token acc at best | best token acc | last ppl (step) |',
        '|---|---:|---:|---:|---:|',
    ]
    for name in sorted(curves):
        points = [p for p in curves[name] if p['ppl'] is not None]
        if not points:
            continue
        best = min(points, key=lambda p: p['ppl'])
        last = points[-1]
        top = max(p['token_acc'] for p in points)
        lines.append(
            f"| {name} | {best['ppl']:.1f} ({best['step']}) | {best['token_acc']:.4f} "
            f"| {top:.4f} | {last['ppl']:.1f} ({last['step']}) |"
        )
    return '\n'.join(lines) + '\n'


def step_curves(args: argparse.Namespace, layout: Layout) -> None:
    """``OUT/curves.json`` and one plot per corpus: valid ppl against steps."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    curves = {}
    for folder, _, files in os.walk(layout.out):
        name = os.path.relpath(folder, layout.out)
        # the search's own trials are flash runs, summarised by the search
        if 'model.trainstats' in files and name.split(os.sep)[0] != 'search':
            curves[name] = valid_curve(os.path.join(folder, 'model'))
    path = os.path.join(layout.out, 'curves.json')
    atomic_write(path, lambda fh: json.dump(curves, fh, indent=1))
    table = curves_table(curves)
    atomic_write(os.path.join(layout.out, 'curves.md'), lambda fh: fh.write(table))
    print(table)
    for corpus in ('full', 'corpus2'):
        names = sorted(n for n in curves if n.startswith(corpus + '/'))
        if not names:
            continue
        fig, ax = plt.subplots(figsize=(7, 4.5))
        # one colour per student (its seeds share it), dashed for baselines,
        # thinner for the second and later seeds
        student = {n: re.sub(r'-s\d+$', '', n) for n in names}
        colours = dict(zip(sorted(set(student.values())), plt.cm.tab10.colors))
        for name in names:
            points = [p for p in curves[name] if p['ppl'] is not None]
            first_seed = not re.search(r'-s[1-9]\d*$', name)
            ax.plot(
                [p['step'] for p in points],
                [p['ppl'] for p in points],
                '--' if 'baseline' in name else '-',
                color=colours[student[name]],
                linewidth=1.6 if first_seed else 0.8,
                label=name.split('/', 1)[1],
            )
        ax.set_xlabel('training steps')
        ax.set_ylabel('validation perplexity')
        ax.set_yscale('log')
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(os.path.join(layout.out, f'curves_{corpus}.png'), dpi=120)
        plt.close(fig)
    print(f'wrote {path}')


def plain_copy(runner: Runner, name: str, model_file: str) -> str:
    """``MODEL.plain``: the student as a plain transformer/generator, as users serve
    it, so that every model is timed without the distillation agent. ``--opt-only``
    takes students with projections (removed) and without (a search recipe with
    the prediction term alone has none)."""
    runner.step(f'strip-{name}', plain_copy_command(model_file, '--opt-only'))
    return model_file + '.plain'


def step_report(args: argparse.Namespace, runner: Runner, layout: Layout) -> None:
    """The distillation report of the full students and baselines (test split)."""
    students, labels, baselines = [], [], []
    for path in args.recipe:
        name = os.path.splitext(os.path.basename(path))[0]
        students += [
            plain_copy(runner, name, layout.student(f'full/{name}')),
            plain_copy(
                runner, f'{name}-baseline', layout.student(f'full/{name}-baseline')
            ),
        ]
        labels += [name, f'{name}-baseline']
        baselines.append(f'{name}-baseline')
    argv = [
        sys.executable, '-m', 'anti_scaling.scripts.distill_report', '--teacher',
        args.teacher, '--students', *students, '--labels', 'teacher', *labels,
        '--baselines', *baselines, '--out', os.path.join(layout.out, args.report_name),
        '-t', TASK, '-dp', layout.datapath, '--num-examples',
        str(args.report_examples), '--batchsize', '1', '--beam-size', '4',
        '--threads', '1', '--quantize', 'int8', '--overwrite',
    ]  # fmt: skip
    runner.step(args.report_name, argv)


def main(argv: list[str] | None = None) -> int:
    install_excepthook()
    p = argparse.ArgumentParser(prog='python -m experiments.search_experiment')
    p.add_argument('step', choices=['search', 'full', 'corpus2', 'curves', 'report'])
    p.add_argument('--out', default='runs/search')
    p.add_argument('--teacher', default='runs/chitchat/teacher/model')
    p.add_argument('-dp', '--datapath', default=None)
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--trials', type=int, default=20)
    p.add_argument('--search-steps', type=int, default=300)
    p.add_argument('--recipe', action='append', default=[])
    p.add_argument('--extra', nargs='*', default=[], help='more flags for students')
    p.add_argument('--full-steps', type=int, default=6000)
    p.add_argument('--valid-steps', type=int, default=500)
    p.add_argument('--corpus2-teacher-steps', type=int, default=400)
    p.add_argument('--corpus2-steps', type=int, default=400)
    p.add_argument('--corpus2-valid-steps', type=int, default=25)
    p.add_argument('--seeds', type=int, nargs='+', default=[0, 1])
    p.add_argument('--report-examples', type=int, default=400)
    p.add_argument(
        '--report-name', default='report', help='the report folder and step name'
    )
    p.add_argument('--force', action='store_true')
    p.add_argument('--dry-run', action='store_true')
    args = p.parse_args(argv)
    datapath = args.datapath or os.path.join(os.path.dirname(args.out), 'parlai_data')
    layout = Layout(args.out, datapath)
    runner = Runner(layout, args.threads, args.dry_run, args.force)
    if args.step in ('full', 'corpus2', 'report') and not args.recipe:
        raise DistillationError(f'{args.step} needs --recipe (a search recipe file)')
    if args.step == 'search':
        step_search(args, runner, layout)
    elif args.step == 'full':
        step_full(args, runner, layout)
    elif args.step == 'corpus2':
        step_corpus2(args, runner, layout)
    elif args.step == 'report':
        step_report(args, runner, layout)
    else:
        step_curves(args, layout)
    return 0


if __name__ == '__main__':
    sys.exit(main())
