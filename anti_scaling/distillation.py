"""The four distillation agents: ``--model anti_scaling.distillation:<Agent>``.

- :class:`DistillTransformerAgent`, :class:`DistillBartAgent` (DistilBERT style):
  the teacher's width, fewer layers, initialised from the teacher's weights.
- :class:`DistillNarrowTransformerAgent`, :class:`DistillNarrowBartAgent`
  (TinyBERT style): any width, FFN size and layer count, trained from scratch
  with student-to-teacher projections that exist only for training (strip them
  with ``python -m anti_scaling.scripts.remove_projection_matrices MODEL``).
"""

from __future__ import annotations

try:
    import parlai  # noqa: F401
except ModuleNotFoundError as error:  # installed without the README's first step
    raise ModuleNotFoundError(
        'anti_scaling needs ParlAI 1.7.2, installed without its dependency list: '
        'pip install -c constraints.txt --no-deps parlai==1.7.2 (see README.md)'
    ) from error

from parlai.agents.bart.bart import BartAgent
from parlai.agents.transformer.transformer import TransformerGeneratorAgent
from parlai.core.opt import Opt

from . import zoo  # noqa: F401  (lets ParlAI resolve zoo:anti_scaling/NAME/model)
from .agents.mixin import DistillationMixin
from .errors import DistillationError, install_excepthook

# Bad input found while ParlAI parses arguments (before any agent exists) must
# also show as one line.
install_excepthook()

__all__ = [
    'DistillTransformerAgent',
    'DistillNarrowTransformerAgent',
    'DistillBartAgent',
    'DistillNarrowBartAgent',
]


class _TransformerTeacher:
    teacher_family = TransformerGeneratorAgent
    teacher_excluded = (BartAgent,)


class _BartTeacher:
    teacher_family = BartAgent
    teacher_excluded = ()

    def _initialize_bart(self, opt: Opt) -> Opt:
        """Never download bart_large: the student starts from the teacher or scratch.

        ParlAI's ``--init-fairseq-model`` path needs downloaded GPT-2 files and
        unpickles without checks; fairseq checkpoints are converted offline with
        ``python -m anti_scaling.scripts.convert_fairseq_bart`` instead.
        """
        if opt.get('init_fairseq_model'):
            raise DistillationError(
                '--init-fairseq-model is not supported by the distillation agents: '
                'convert the checkpoint with python -m '
                'anti_scaling.scripts.convert_fairseq_bart and pass the result as '
                '--teacher-model (or --init-model)'
            )
        return opt


class DistillTransformerAgent(
    DistillationMixin, _TransformerTeacher, TransformerGeneratorAgent
):
    """Layer-removal student of a ``transformer/generator`` teacher."""

    wide = True


class DistillNarrowTransformerAgent(
    DistillationMixin, _TransformerTeacher, TransformerGeneratorAgent
):
    """Narrow student (any width) of a ``transformer/generator`` teacher."""

    wide = False


class DistillBartAgent(DistillationMixin, _BartTeacher, BartAgent):
    """Layer-removal student of a ``bart`` teacher."""

    wide = True


class DistillNarrowBartAgent(DistillationMixin, _BartTeacher, BartAgent):
    """Narrow student (any width) of a ``bart`` teacher."""

    wide = False
