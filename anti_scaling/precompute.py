"""Running a frozen teacher over a ParlAI task, for the scripts that precompute
what students learn from (the teacher-output cache, pseudo-labels).

The teacher agent itself observes the task, so contexts and labels are
vectorised exactly as a student with the teacher's dictionary and text options
sees them in training (same history, truncation, start/end tokens). The
scripts intercept the agent's ``eval_step`` to do their work on each batch;
ParlAI's worlds do the rest (batching, episodes, one ordered pass).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from parlai.core.message import Message
from parlai.core.opt import Opt
from parlai.core.params import ParlaiParser
from parlai.core.torch_agent import Batch
from parlai.core.torch_generator_agent import TorchGeneratorAgent
from parlai.core.worlds import World

from .errors import DistillationError, describe_exception
from .model_files import freeze, load_generator_agent, resolve_model_file

# Fields of an observation that belong to its label (dropped before re-vectorising
# the same context with another label).
_LABEL_FIELDS = {
    'labels',
    'eval_labels',
    'labels_vec',
    'eval_labels_vec',
    'labels_choice',
    'eval_labels_choice',
    'label_original_length',
    'label_truncate_rate',
    'label_truncated_length',
}


def add_teacher_model_arg(parser: ParlaiParser) -> None:
    """``--teacher-model T``: the model ParlAI loads (its options and flags apply).

    It is stored as ``model_file``, so ParlAI adds the teacher's own command-line
    options (``--beam-size``, ``--inference``, ``--text-truncate``...) and command
    line values override the teacher's saved options, as with ``parlai eval_model
    -mf T``.
    """
    parser.add_argument(
        '--teacher-model',
        dest='model_file',
        type=str,
        default=None,
        help='The trained teacher model file (or zoo: path); same as -mf.',
    )


def teacher_pass_parser(parser: ParlaiParser | None, description: str) -> ParlaiParser:
    """ParlAI's parser (``parser``, or a new one with ``description``) with the
    task, ``--teacher-model``, and by default batches of 32 over the train split."""
    if parser is None:
        parser = ParlaiParser(True, True, description)
    add_teacher_model_arg(parser)
    parser.set_defaults(batchsize=32, datatype='train')
    return parser


def require_task(opt: Opt, purpose: str) -> None:
    """One line unless ``-t`` names the task (``purpose``: what it is for)."""
    if not opt.get('task'):
        raise DistillationError(f'-t/--task is required: {purpose}')


def split_datatype(split: str) -> str:
    """One ordered, non-repeating pass over a split (``train`` -> ``train:evalmode``)."""
    base = split.split(':')[0]
    if base not in ('train', 'valid', 'test'):
        raise DistillationError(
            f'unknown split {split!r}: use train, valid or test (the data is always '
            'read once, in order)'
        )
    return 'train:evalmode' if base == 'train' else base


def with_overrides(opt: Opt, **overrides: Any) -> Opt:
    """A copy of ``opt`` with ``overrides`` set, also as command-line overrides."""
    new = copy.deepcopy(opt)
    new.setdefault('override', {})
    for key, value in overrides.items():
        new[key] = value
        new['override'][key] = value
    return new


def create_teacher_agent(opt: Opt, **overrides: Any) -> TorchGeneratorAgent:
    """Load the teacher named by ``opt['model_file']`` with the command line's options.

    The agent is built for evaluation (no optimizer), eval mode, frozen;
    ``overrides`` are applied on top. Raises :class:`DistillationError` for a
    missing or non-generator model.
    """
    if not opt.get('model_file'):
        raise DistillationError(
            '--teacher-model is required: the trained ParlAI model whose outputs '
            'are to be computed'
        )
    agent_opt = with_overrides(opt, datatype='valid', **overrides)
    agent_opt['model_file'] = resolve_model_file(
        agent_opt['model_file'], opt.get('datapath')
    )
    agent = load_generator_agent(agent_opt, role='teacher')
    agent.model.eval()
    freeze(agent.model)
    return agent


def vocab_size(agent: TorchGeneratorAgent) -> int:
    """The size of the teacher's output distribution (its embedding rows)."""
    embeddings = getattr(agent.model, 'embeddings', None)
    if isinstance(embeddings, torch.nn.Embedding):
        return int(embeddings.num_embeddings)
    return len(agent.dict)


def label_vector(
    agent: TorchGeneratorAgent, observation: Message, label: str
) -> torch.Tensor:
    """``label`` vectorised as ``agent`` vectorises a label of ``observation``."""
    message = Message({k: v for k, v in observation.items() if k not in _LABEL_FIELDS})
    message['eval_labels'] = [label]
    agent.vectorize(
        message,
        agent.history,
        text_truncate=agent.text_truncate,
        label_truncate=agent.label_truncate,
    )
    return message['eval_labels_vec']


def label_vectors(
    agent: TorchGeneratorAgent, observations: list[Message], labels: list[str]
) -> torch.Tensor:
    """Each label vectorised as ``agent`` vectorises a label of its observation,
    right-padded into ``[n, max_len]``."""
    vectors = [label_vector(agent, o, label) for o, label in zip(observations, labels)]
    return pad(vectors, agent.NULL_IDX)


def pad(vectors: list[torch.Tensor], null_idx: int) -> torch.Tensor:
    """Right-pad 1-D id tensors into ``[n, max_len]``."""
    from parlai.utils.torch import padded_tensor

    return padded_tensor(vectors, pad_idx=null_idx)[0]


def forced_scores(
    agent: TorchGeneratorAgent,
    batch: Batch,
    text_vec: torch.Tensor,
    label_vec: torch.Tensor,
) -> torch.Tensor:
    """The teacher's logits ``[B, T, V]`` for ``label_vec`` under teacher forcing."""
    if text_vec is batch.text_vec:
        model_input = agent._model_input(batch)
    else:
        model_input = agent._model_input(Batch(text_vec=text_vec, label_vec=label_vec))
    with torch.no_grad():
        return agent.model(*model_input, ys=label_vec)[0]


class BatchTap:
    """Route every batch of ``agent`` to ``step(batch, observations)``.

    ``observations`` are the messages of the batch's valid rows, in row order.
    ``step`` may return a ParlAI ``Output`` (e.g. generated text) or None.
    Install once per agent; the agent is then used only through ParlAI worlds.
    """

    def __init__(
        self,
        agent: TorchGeneratorAgent,
        step: Callable[[Batch, list[Message]], Any],
    ):
        self.agent = agent
        self.step = step
        self.batches = 0
        self._observations: list[Message] = []
        original_batch_act = agent.batch_act

        def batch_act(observations):  # noqa: ANN001, ANN202
            self._observations = observations
            return original_batch_act(observations)

        def run_step(batch):  # noqa: ANN001, ANN202
            self.batches += 1
            rows = [] if batch.valid_indices is None else list(batch.valid_indices)
            observations = [self._observations[i] for i in rows]
            with torch.no_grad():
                return self.step(batch, observations)

        agent.batch_act = batch_act
        agent.eval_step = run_step
        agent.train_step = run_step


def task_world(opt: Opt, agent: TorchGeneratorAgent, split: str) -> World:
    """A ParlAI world for one ordered pass of ``agent`` over ``split`` of the task.

    Run it with ``while not world.epoch_done(): world.parley()``.
    """
    from parlai.core.worlds import create_task

    task_opt = with_overrides(opt, datatype=split_datatype(split))
    try:
        return create_task(task_opt, agent)
    except DistillationError:
        raise
    except Exception as e:
        raise DistillationError(
            f"cannot run task {opt.get('task')!r} ({split}): {describe_exception(e)}"
        ) from None


def run_world(world: World, description: str) -> None:
    """Parley until the end of the epoch, with a progress bar (on a terminal)."""
    from tqdm import tqdm

    total = world.num_examples()
    with tqdm(total=total, desc=description, unit='ex', disable=None) as bar:
        while not world.epoch_done():
            world.parley()
            bar.update(max(0, world.get_total_exs() - bar.n))
    world.shutdown()
