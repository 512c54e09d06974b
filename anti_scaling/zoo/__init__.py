"""The model zoo: recipes, verified downloads and publishing of students.

- :mod:`.recipes`: ``--recipe NAME`` option sets (:func:`apply_recipe`).
- :mod:`.manifest`: which models exist, their files, SHA-256 and sizes.
- :mod:`.download`: fetch a model so a later run sees it complete or not at all.
- :mod:`.publish`: turn a stripped student into an archive and manifest entry.
- :mod:`.finder`: ``zoo:anti_scaling/NAME/model`` in ParlAI commands.

Command line: ``python -m anti_scaling.scripts.zoo {list,download,publish,verify}``.
Importing this package installs the ParlAI import hook (:func:`install_zoo_finder`);
nothing heavier is imported until used.
"""

from .finder import ZOO_PREFIX, install_zoo_finder, zoo_path
from .recipes import RECIPES, apply_recipe, get_recipe, recipe_options

__all__ = [
    'RECIPES',
    'ZOO_PREFIX',
    'apply_recipe',
    'get_recipe',
    'install_zoo_finder',
    'recipe_options',
    'zoo_path',
]

install_zoo_finder()
