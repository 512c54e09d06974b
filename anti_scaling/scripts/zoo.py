"""Command line of the model zoo (the zoo itself is :mod:`anti_scaling.zoo`).

    python -m anti_scaling.scripts.zoo list [--json]
    python -m anti_scaling.scripts.zoo download NAME [--mirror URL] [-dp DATAPATH]
    python -m anti_scaling.scripts.zoo publish MODEL_FILE --name NAME --output-dir DIR \\
        [--recipe R] [--teacher T] [--report REPORT.json] [--merge-into MANIFEST]
    python -m anti_scaling.scripts.zoo verify NAME [-dp DATAPATH]

Every subcommand reads user manifests from ``--manifest`` (repeatable) and
``ANTI_SCALING_ZOO_MANIFEST``; downloads take their mirror from ``--mirror`` or
``ANTI_SCALING_ZOO_MIRROR``. ``download`` prints the model file's path, for
``-mf``/``--init-model``/``--teacher-model`` of any ParlAI command.
"""

from __future__ import annotations

import argparse
import json
import sys

from ..zoo.manifest import ENV_MANIFEST, ENV_MIRROR, format_size, load_catalog
from ..zoo.recipes import RECIPES
from . import command_line

PROG = 'python -m anti_scaling.scripts.zoo'


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        '--manifest',
        action='append',
        default=[],
        metavar='PATH',
        help=f'a user manifest adding models (repeatable; also ${ENV_MANIFEST})',
    )
    command_line.add_datapath_arg(
        parser,
        default=None,
        help="ParlAI's data directory (default: $PARLAI_DATAPATH or ParlAI's)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m anti_scaling.scripts.zoo`` argument parser."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description='Distillation recipes and verified downloads of teachers and '
        'students. Our agents accept zoo:anti_scaling/NAME/model wherever ParlAI '
        'takes a model file.',
    )
    sub = parser.add_subparsers(dest='command', required=True)

    p = sub.add_parser('list', help='show recipes and downloadable models')
    _add_common(p)
    p.add_argument('--json', action='store_true', help='machine-readable output')

    p = sub.add_parser(
        'download', help='fetch and verify a model; print its model file path'
    )
    p.add_argument('name', help='zoo model name (see list)')
    _add_common(p)
    p.add_argument(
        '--mirror',
        default=None,
        metavar='URL',
        help=f'base URL (or local directory) serving the files (also ${ENV_MIRROR})',
    )
    p.add_argument('--retries', type=int, default=3, help='retries per file')
    p.add_argument(
        '--timeout', type=float, default=60.0, help='seconds without data to give up'
    )

    p = sub.add_parser(
        'publish', help='write a zoo archive and manifest entry for a student'
    )
    p.add_argument('model_file', help='a stripped student (MODEL with MODEL.opt/.dict)')
    p.add_argument('--name', required=True, help='zoo name of the model')
    p.add_argument('--output-dir', required=True, help='where to write the files')
    p.add_argument('--recipe', default=None, help='recipe the model was trained with')
    p.add_argument('--teacher', default=None, help='teacher it was distilled from')
    p.add_argument('--report', default=None, help='JSON file of report figures')
    p.add_argument('--description', default=None, help='one-line description')
    p.add_argument(
        '--kind', default='student', choices=('student', 'teacher'), help='model kind'
    )
    p.add_argument(
        '--base-url', default=None, help='where the archive will be served from'
    )
    p.add_argument(
        '--merge-into', default=None, metavar='MANIFEST', help='also add the entry here'
    )
    p.add_argument(
        '--keep-training-state',
        action='store_true',
        help='keep optimizer and scheduler state in the checkpoint',
    )

    p = sub.add_parser('verify', help='re-hash an installed model against its marker')
    p.add_argument('name')
    _add_common(p)
    return parser


def _list(args: argparse.Namespace) -> int:
    from ..zoo.download import installed, model_dir

    catalog = load_catalog(args.manifest)
    if args.json:
        doc = {
            'recipes': {
                name: {
                    'description': r.description,
                    'agent': r.agent,
                    'teacher': r.teacher,
                    'options': r.options,
                    'student_shape': r.student_shape,
                    'sources': list(r.sources),
                    'notes': list(r.notes),
                }
                for name, r in sorted(RECIPES.items())
            },
            'models': [m.to_json() for _, m in sorted(catalog.models.items())],
        }
        print(json.dumps(doc, indent=2))
        return 0
    print('Recipes (--recipe NAME; flags given on the command line win):')
    for name, recipe in sorted(RECIPES.items()):
        print(f'  {name:22} {recipe.summary()}')
        print(f'  {"":22} {recipe.description}')
    print()
    print(
        'Models (-mf zoo:anti_scaling/NAME/model with our agents, or '
        f'{PROG} download NAME):'
    )
    for name, model in sorted(catalog.models.items()):
        status = []
        if model.unverifiable:
            alternative = model.extra.get('parlai_zoo')
            status.append(
                'no published SHA-256: pin one in a user manifest to download'
                + (f' (ParlAI: {alternative})' if alternative else '')
            )
        if model.recipe or model.teacher:
            status.append(
                ', '.join(
                    f'{k} {v}'
                    for k, v in (('recipe', model.recipe), ('teacher', model.teacher))
                    if v
                )
            )
        if installed(model_dir(args.datapath, name), model):
            status.append('installed')
        print(
            f'  {name:22} {model.kind:8} {format_size(model.size):13} '
            + '; '.join(status)
        )
        if model.description:
            print(f'  {"":22} {model.description}')
    return 0


def _download(args: argparse.Namespace) -> int:
    from ..zoo.download import fetch_model_file

    path = fetch_model_file(
        args.name,
        args.datapath,
        mirror=args.mirror,
        manifests=args.manifest,
        retries=args.retries,
        timeout=args.timeout,
    )
    print(path)
    return 0


def _publish(args: argparse.Namespace) -> int:
    from ..export.publish import publish_model

    result = publish_model(
        args.model_file,
        args.name,
        args.output_dir,
        recipe=args.recipe,
        teacher=args.teacher,
        report=args.report,
        description=args.description,
        kind=args.kind,
        base_url=args.base_url,
        merge_into=args.merge_into,
        keep_training_state=args.keep_training_state,
    )
    file = result.model.files[0]
    print(f'{result.archive}: {format_size(file.size)}, sha256 {file.sha256}')
    print(f'{result.manifest}: manifest entry for {result.model.name}')
    if args.merge_into:
        print(f'{args.merge_into}: updated')
    return 0


def _verify(args: argparse.Namespace) -> int:
    from ..zoo.download import model_dir, verify_installed

    directory = model_dir(args.datapath, args.name)
    problems = verify_installed(directory)
    if problems:
        for problem in problems:
            print(f'{args.name}: {problem}', file=sys.stderr)
        return 1
    print(f'{directory}: every file matches its recorded SHA-256')
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the zoo command line; returns the exit status (2 for a bad input)."""
    args = build_parser().parse_args(argv)
    commands = {
        'list': _list,
        'download': _download,
        'publish': _publish,
        'verify': _verify,
    }
    return command_line.exit_status(lambda: commands[args.command](args))


if __name__ == '__main__':
    sys.exit(main())
