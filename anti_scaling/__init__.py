"""anti_scaling: knowledge distillation for ParlAI generators.

Turns a trained ParlAI ``transformer/generator`` or ``bart`` model (the teacher)
into a smaller, faster student that loads as a plain ParlAI model. The public
agents live in :mod:`anti_scaling.distillation`.
"""

import warnings

__version__ = "0.1.0"

# ParlAI 1.7.2 imports pkg_resources; its deprecation warning says nothing useful
# to our users.
warnings.filterwarnings('ignore', message='pkg_resources is deprecated')
