"""Search the student of a teacher: shapes and losses by quality and measured speed.

    python -m anti_scaling.scripts.search --teacher T -t TASK --out DIR --trials N \\
        [--storage URL] [--study-name NAME] [--space FILE] [--param NAME=SPEC ...] \\
        [--sampler tpe|nsga2] [--steps 200] [--valid-every 50] \\
        [--train-args "-lr 1e-3 ..."] [--target-speedup 5] \\
        [--train-baselines chosen|front] [TASK OPTIONS]

Each trial distils one student of the space through ParlAI for ``--steps``
steps, validates it every ``--valid-every`` steps (pruning hopeless ones), and
measures it against the teacher: token accuracy and perplexity under teacher
forcing on the valid split, greedy generation speed (batch size 1) as the
distillation report measures it. optuna searches the two objectives (TPE or
NSGA-II). The study lives in ``DIR/study.db`` (or ``--storage``); the same
command resumes it, and several processes with the same ``--storage`` and
``--study-name`` share it. Outputs in ``DIR``: ``trials.json``,
``pareto.md``, ``pareto.png`` and ``recipes/``. ``--train-baselines`` then
trains, for the chosen trial or every front trial, a student of the same shape
without a teacher (same budget, flags and seed) and states the teacher's margin
over it. Every other option goes to the task (training and evaluation), as in
ParlAI's scripts (e.g. ``-t jsonfile --jsonfile-datapath FILE.jsonl``; or after
``--``). See docs/search.md.
"""

from __future__ import annotations

import argparse
import shlex
import sys

from ..errors import DistillationError
from . import command_line


def parser() -> argparse.ArgumentParser:
    """The command-line parser (documented in the module docstring and docs/search.md)."""
    p = command_line.script_parser(
        'search',
        'Search student shapes and losses by distilled quality and speed.',
        task_parser='train_model',
    )
    p.add_argument('--teacher', required=True, help='the teacher model file')
    p.add_argument('-t', '--task', required=True, help='ParlAI task')
    p.add_argument('--out', required=True, help='folder of the study and outputs')
    p.add_argument(
        '--trials',
        type=int,
        required=True,
        help='finished trials the study should have',
    )
    p.add_argument(
        '--storage', default=None, help='optuna storage URL (default: sqlite in --out)'
    )
    p.add_argument('--study-name', default='search', help='study name (search)')
    p.add_argument('--space', default=None, help='search space file (YAML or JSON)')
    p.add_argument(
        '--param',
        action='append',
        default=[],
        metavar='NAME=SPEC',
        help='one parameter of the space, e.g. n_decoder_layers=1:4, '
        'pred_loss_type=kl,jsd, hidden_loss_coeff=0.1:10:log:optional (repeatable)',
    )
    p.add_argument('--sampler', default='tpe', choices=['tpe', 'nsga2'])
    p.add_argument('--seed', type=int, default=None, help="the sampler's seed")
    p.add_argument(
        '--startup-trials', type=int, default=10, help='random trials before TPE (10)'
    )
    p.add_argument('--population', type=int, default=10, help='NSGA-II population (10)')
    p.add_argument('--steps', type=int, default=200, help='training steps per trial')
    p.add_argument(
        '--valid-every', type=int, default=50, help='validate every N steps (0: never)'
    )
    p.add_argument(
        '--valid-examples', type=int, default=200, help='examples per validation'
    )
    p.add_argument(
        '--quality-examples', type=int, default=500, help='valid examples measured'
    )
    p.add_argument(
        '--timing-examples', type=int, default=50, help='of them, replies timed'
    )
    p.add_argument('--eval-batchsize', type=int, default=32, help='teacher forcing')
    p.add_argument('--warmup', type=int, default=2, help='untimed warm-up batches')
    p.add_argument('--quality', default='token_acc', choices=['token_acc', 'ppl'])
    p.add_argument('--speed', default='per_reply', choices=['per_reply', 'per_token'])
    p.add_argument('--no-prune', action='store_true', help='never prune a trial')
    p.add_argument(
        '--prune-margin', type=float, default=0.05, help='relative margin (0.05)'
    )
    p.add_argument(
        '--prune-min-trials',
        type=int,
        default=1,
        help='as-cheap completed trials needed to prune (1)',
    )
    p.add_argument(
        '--train-args',
        default='',
        help='extra parlai train_model flags for every trial, as one string '
        "(default: the teacher's optimiser flags)",
    )
    command_line.add_datapath_arg(p)
    p.add_argument('--threads', type=int, default=None, help='torch threads')
    p.add_argument(
        '--full-steps', type=int, default=10000, help='budget of the full commands'
    )
    p.add_argument(
        '--target-speedup', type=float, default=None, help='choose a front point'
    )
    p.add_argument(
        '--train-baselines',
        choices=['chosen', 'front'],
        default=None,
        help='after the trials, train a no-teacher baseline of the same shape and '
        'budget for the chosen trial (needs --target-speedup) or every front trial, '
        "and state the teacher's margin over it",
    )
    p.add_argument('--keep-models', action='store_true', help="keep trials' models")
    p.add_argument('--timeout', type=float, default=None, help='stop after N seconds')
    p.add_argument('--quiet', action='store_true', help='no progress bar')
    command_line.add_verbose_arg(p, help="ParlAI's and optuna's logs")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the search; 0 when done, 2 (one line on stderr) on bad input, 130 if stopped."""
    args, task_args = command_line.split_task_args(
        parser(), command_line.command_argv(argv)
    )
    return command_line.exit_status(lambda: _search(args, task_args))


def _search(args: argparse.Namespace, task_args: list[str]) -> int:
    """Prepare the study (bad input stops here), run it and say what it wrote."""
    try:
        import optuna  # noqa: F401
    except ImportError:
        raise DistillationError(
            "the search needs optuna: pip install 'anti-scaling[search]' "
            '(or pip install -c constraints.txt optuna)'
        ) from None
    from ..search.settings import SearchSettings, safe_url
    from ..search.study import prepare_search, run_search

    if not args.verbose:
        command_line.quiet_libraries()
    settings = command_line.settings_from(
        SearchSettings,
        args,
        space_file=args.space,
        params=args.param,
        sampler_seed=args.seed,
        prune=not args.no_prune,
        train_args=shlex.split(args.train_args),
        task_args=task_args,
        progress=not args.quiet,
    )
    search = prepare_search(settings)
    done = 'resuming' if search.resumed else 'new'
    print(
        f'{done} study {settings.study_name!r} in {safe_url(settings.storage_url)}: '
        f'{len(search.study.trials)} trials so far, target {settings.trials} finished'
    )
    try:
        paths = run_search(search)
    except KeyboardInterrupt:
        print('interrupted: run the same command to resume the study', file=sys.stderr)
        return 130
    print('written: ' + ', '.join(paths.values()))
    return 0


if __name__ == '__main__':
    sys.exit(main())
