"""Markdown tables of a recipe's per-rank memory (:mod:`.memory_recipes`)."""

from __future__ import annotations

from ..zoo.recipes import get_recipe
from .memory_recipes import VARIANTS, Estimate, Setting, estimate

MODE_NAMES = {
    'safe': '`--fp16-impl safe`',
    'mem_efficient': '`--fp16-impl mem_efficient`',
    'fp32': 'float32 (no `--fp16`)',
}
DEVICES = {'cuda': 'CUDA', 'cpu': 'the CPU'}
PHASES = {
    'forward': 'end of forward',
    'backward': 'backward',
    'optimizer step': 'optimizer step',
}


def gib(value: int) -> str:
    """Bytes as GiB with two decimals (a dash for nothing)."""
    return f'{value / 2**30:.2f} GiB' if value else '-'


def _row(cells: list[str]) -> str:
    return '| ' + ' | '.join(cells) + ' |'


def recipe_table(recipe_name: str, settings: list[Setting]) -> str:
    """Every figure of ``recipe_name`` run as it is, one column per setting."""
    recipe = get_recipe(recipe_name)
    first = settings[0]
    b = first.batch
    estimates = [estimate(recipe_name, s) for s in settings]
    lines = [
        f'`{recipe.name}` ({recipe.agent.split(":")[-1]}, teacher BlenderBot 2.7B), '
        f'per rank: batch {b.size}, {b.text_length} context + {b.label_length} '
        f'label tokens each, on {DEVICES[first.device]}',
        '',
        _row(['', 'formula'] + [MODE_NAMES[s.mode] for s in settings]),
        _row(['---'] * (2 + len(settings))),
    ]
    names = list(dict.fromkeys(k for e in estimates for k in e.lines))
    for name in names:
        formula = next(e.lines[name][1] for e in estimates if name in e.lines)
        values = [gib(e.lines[name][0]) if name in e.lines else '-' for e in estimates]
        lines.append(_row([name, formula.replace('|', '/')] + values))
    lines.append(
        _row(
            ['**peak** (its phase)', 'persistent + the largest phase']
            + [f'**{gib(e.peak)}** ({PHASES[e.phase]})' for e in estimates]
        )
    )
    return '\n'.join(lines)


def variants_table(recipe_name: str, settings: list[Setting]) -> str:
    """The peak of each way to run the recipe, and what it saves."""
    recipe = get_recipe(recipe_name)
    variants = [v for v in VARIANTS if recipe.wide or not v.startswith('shared')]
    lines = [
        'Peaks of the ways to run it (saves: the cache against the live teacher with '
        'the same terms, a shared encoder against the recipe):',
        '',
        _row(['run'] + [f'peak, {MODE_NAMES[s.mode]}' for s in settings]),
        _row(['---'] * (1 + len(settings))),
    ]
    peaks: dict[str, list[Estimate]] = {
        v: [estimate(recipe_name, s, v) for s in settings] for v in variants
    }
    # what each variant is compared with
    base = {'cache': 'prediction', 'shared': 'recipe', 'shared_frozen': 'recipe'}
    for variant in variants:
        cells = []
        for i, e in enumerate(peaks[variant]):
            cell = gib(e.peak)
            if variant in base:
                saved = peaks[base[variant]][i].peak - e.peak
                cell += f' (saves {saved / 2**30:.2f} GiB)'
            cells.append(cell)
        label = VARIANTS[variant].replace('top-k', f'top-{settings[0].top_k}')
        lines.append(_row([label] + cells))
    return '\n'.join(lines)
