"""Sequence-level distillation data: the teacher's own replies as labels.

    python -m anti_scaling.scripts.generate_pseudo_labels --teacher-model T -t TASK \\
        --output FILE.jsonl [-dt train] [-bs 32] [-dp DP] \\
        [--inference beam --beam-size 4 | --inference nucleus --topp 0.9 | ...] \\
        [--min-teacher-score S | --drop-worst-fraction F] [--min-reference-f1 F1] \\
        [--history-replies gold|teacher] [--overwrite true] [task and text options...]

The teacher generates a reply for every example of the split (generation flags
exactly as ParlAI's ``TorchGeneratorAgent``: ``--inference``, ``--beam-size``,
``--topp``, ``--topk``, ``--temperature``, ``--beam-min-length``, blocking...;
unset ones keep the teacher's saved values), and the examples are written in
ParlAI's Conversations format, so a student trains on them with
``-t jsonfile --jsonfile-datapath FILE.jsonl`` and any of our agents (Kim and
Rush 2016, sequence-level KD; DistilBART's pseudo-labels). ``FILE.metadata``
(next to it) records the teacher, the settings and the counts.

Contexts (``--history-replies``):

- ``gold`` (default, as DistilBART: gold inputs, teacher outputs as labels): the
  teacher replies to the task's own contexts, whose history holds the task's
  gold replies, and the student sees exactly those contexts. A multi-turn
  episode is therefore written as one single-turn conversation per example whose
  text is the gold history joined with ``--delimiter`` (ParlAI's jsonfile would
  otherwise put the *teacher's* replies into later turns' history). Each
  flattened context is checked to vectorise to the same ids as in the task; if
  it cannot (e.g. ``--person-tokens true``; several gold labels, of which
  ParlAI's history takes a random one; a ``bytelevelbpe`` or ``space``
  dictionary, which splits the joined turns differently from the turns one by
  one), the script stops and says so.
  Single-turn tasks keep their structure unchanged.
- ``teacher``: episodes keep their structure, and later turns' history holds the
  teacher's own earlier replies (the teacher generates with ``--use-reply
  model``), so every label is the teacher's reply to exactly the context the
  student will see; contexts then differ from the task's after the first turn.

Filter: each reply's score is the teacher's length-normalised log-probability
of it, ``(1/n) sum_t log p_T(y_t | y_<t, x)`` over its ``n`` label tokens (end
token included) as the student will see them (re-tokenised and truncated),
at temperature 1, from a forced-decoding pass (the same for every decoding
method). ``--min-teacher-score S`` drops replies scoring below ``S``;
``--drop-worst-fraction F`` drops the ``floor(F * N)`` lowest-scoring ones (ties:
later examples first kept). With ``--history-replies teacher`` an episode is
cut at its first dropped reply (later contexts contain it). The counts are
logged and returned.

Quality filter (distil-whisper drops pseudo-labels far from the reference):
``--min-reference-f1 F`` keeps only replies whose ParlAI F1 against the
example's gold reply (the maximum over its gold labels; the distillation
report's F1) is at least ``F``; replies to examples without a gold reply are
dropped. It combines with the score filters: a reply is kept when every filter
keeps it. Each reply's F1 is written beside its score (``reference_f1``).
"""

from __future__ import annotations

import datetime
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

import parlai.utils.logging as logging
import torch
from parlai.core.message import Message
from parlai.core.params import ParlaiParser
from parlai.core.script import ParlaiScript
from parlai.core.torch_agent import Batch, Output

from ..cache import fingerprint as fp
from ..compat import tolerant_byte_level_decoding
from ..errors import DistillationError, install_excepthook
from ..fileio import atomic_write
from ..precompute import (
    BatchTap,
    create_teacher_agent,
    forced_scores,
    label_vectors,
    require_task,
    run_world,
    split_datatype,
    task_world,
    teacher_pass_parser,
)
from ..pseudo_labels import cut_episodes, reference_f1, select_by_f1, select_replies

HISTORY_MODES = ('gold', 'teacher')
CONTEXT_SPEAKER = 'partner'
TEACHER_SPEAKER = 'teacher'
METADATA_VERSION = '0.1'  # parlai.utils.conversations.Metadata.version()


def setup_args(parser: ParlaiParser | None = None) -> ParlaiParser:
    """ParlAI's parser with the task, the teacher's options (generation flags
    included) and this script's flags."""
    parser = teacher_pass_parser(parser, 'Write the teacher\'s replies as a dataset')
    group = parser.add_argument_group('Pseudo-labels')
    group.add_argument('--output', type=str, default=None, help='The .jsonl to write.')
    group.add_argument(
        '--history-replies',
        type=str,
        default='gold',
        choices=list(HISTORY_MODES),
        help='Replies in later turns\' history: the task\'s gold ones (contexts '
        'equal the task\'s; multi-turn episodes become one example each) or the '
        'teacher\'s own (episodes kept).',
    )
    group.add_argument(
        '--min-teacher-score',
        type=float,
        default=None,
        help='Drop replies whose mean teacher log-probability per token is below this.',
    )
    group.add_argument(
        '--drop-worst-fraction',
        type=float,
        default=0.0,
        help='Drop this fraction of the replies, the lowest-scoring first.',
    )
    group.add_argument(
        '--min-reference-f1',
        type=float,
        default=None,
        help='Drop replies whose F1 against the gold reply is below this (0-1).',
    )
    group.add_argument(
        '--overwrite', type='bool', default=False, help='Replace an existing output.'
    )
    return parser


# ---------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------


@dataclass
class _Example:
    text: str  # the context as written to the dataset
    reply: str
    score: float
    gold: list[str]
    f1: float = math.nan  # against the gold reply (reference_f1)


@dataclass
class _Slot:
    """One batch row's stream of episodes (ParlAI's batch worlds keep one per row)."""

    examples: list[_Example] = field(default_factory=list)
    history: list[str] = field(default_factory=list)


class _Generator:
    """Per batch: generate, score, and collect examples by episode."""

    def __init__(self, agent: Any, mode: str):
        from parlai.core.agents import create_agent_from_shared

        self.agent = agent
        self.mode = mode
        self.slots: dict[int, _Slot] = {}
        self.episodes: list[list[_Example]] = []
        self.delimiter = agent.opt.get('delimiter', '\n')
        history_size = agent.opt.get('history_size', -1)
        self.history_size = int(history_size) if history_size is not None else -1
        self.scratch = create_agent_from_shared(agent.share())
        self.tap = BatchTap(agent, self.step)

    def step(self, batch: Batch, observations: list[Message]) -> Output | None:
        agent = self.agent
        if batch.text_vec is None:
            return None
        maxlen = agent.label_truncate or 256
        beam_preds_scores, _ = agent._generate(
            batch, agent.beam_size, maxlen, prefix_tokens=agent.get_prefix_tokens(batch)
        )
        replies = [agent._v2t(pred[0]) for pred in beam_preds_scores]
        scores = self._scores(batch, observations, replies)
        for slot_index, obs, reply, score in zip(
            batch.valid_indices, observations, replies, scores
        ):
            self._add(int(slot_index), obs, reply, score)
        return Output(replies)

    def _scores(
        self, batch: Batch, observations: list[Message], replies: list[str]
    ) -> list[float]:
        """Mean teacher log-probability per label token of each reply (T = 1)."""
        agent = self.agent
        label_vec = label_vectors(agent, observations, replies)
        label_vec = label_vec.to(batch.text_vec.device)
        logits = forced_scores(agent, batch, batch.text_vec, label_vec).float()
        log_p = torch.log_softmax(logits, dim=-1)
        token = log_p.gather(-1, label_vec.unsqueeze(-1)).squeeze(-1)
        mask = label_vec != agent.NULL_IDX
        total = torch.where(mask, token, torch.zeros_like(token)).sum(dim=1)
        return (total / mask.sum(dim=1).clamp(min=1)).tolist()

    def _add(self, slot_index: int, obs: Message, reply: str, score: float) -> None:
        slot = self.slots.setdefault(slot_index, _Slot())
        gold = list(obs.get('eval_labels') or obs.get('labels') or [])
        text = obs['text']
        if self.mode == 'gold':
            text = self._flat_context(slot.history, text)
            if slot.history:
                self._check_flat_context(text, obs)
            slot.history.append(obs['text'])
            if gold:
                slot.history.append(gold[0])
        slot.examples.append(
            _Example(text, reply, score, gold, reference_f1(reply, gold))
        )
        if obs.get('episode_done'):
            if self.mode == 'gold':
                self.episodes.extend([e] for e in slot.examples)
            else:
                self.episodes.append(slot.examples)
            self.slots[slot_index] = _Slot()

    def _flat_context(self, history: list[str], text: str) -> str:
        """The gold history and ``text`` as one text, as ParlAI's history joins them."""
        utterances = [*history, text]
        if self.history_size > 0:
            utterances = utterances[-self.history_size :]
        return self.delimiter.join(utterances)

    def _check_flat_context(self, text: str, obs: Message) -> None:
        """A flattened gold context must vectorise to the ids the task gives."""
        seen = self.scratch.observe(Message({'text': text, 'episode_done': True}))
        vec = seen.get('text_vec')
        self.scratch.reset()
        if vec is None or not torch.equal(
            torch.as_tensor(vec), torch.as_tensor(obs['text_vec'])
        ):
            raise DistillationError(
                'with --history-replies gold, multi-turn episodes are written as '
                'one example per turn whose text is the gold history joined with '
                '--delimiter, but here that text does not vectorise to the ids the '
                'task gives (person tokens, several gold labels, a task-specific '
                'history, or a dictionary that splits joined turns differently '
                f"from single ones, as this teacher's --dict-tokenizer "
                f"{self.agent.opt.get('dict_tokenizer')} may, change the context): "
                'use --history-replies teacher, or turn person tokens off'
            )

    def finish(self) -> list[list[_Example]]:
        """Every episode, in the order they ended (unfinished ones included)."""
        for slot in self.slots.values():
            if slot.examples:
                self.episodes.append(slot.examples)
        self.slots = {}
        return self.episodes


# ---------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------


def conversation_line(episode: list[_Example]) -> str:
    """One episode as one line of ParlAI's Conversations format."""
    dialog = [
        [
            {'id': CONTEXT_SPEAKER, 'text': e.text},
            {
                'id': TEACHER_SPEAKER,
                'text': e.reply,
                'teacher_score': e.score,
                'reference_f1': None if math.isnan(e.f1) else e.f1,
                'gold_labels': e.gold,
            },
        ]
        for e in episode
    ]
    return json.dumps({'dialog': dialog}, ensure_ascii=False)


def metadata_path(output: str) -> str:
    """Where ParlAI's Conversations looks for the metadata of ``output``."""
    return os.path.splitext(output)[0] + '.metadata'


GENERATION_KEYS = (
    'inference',
    'beam_size',
    'topk',
    'topp',
    'temperature',
    'beam_min_length',
    'beam_length_penalty',
    'beam_block_ngram',
    'beam_context_block_ngram',
    'beam_block_full_context',
    'beam_delay',
    'beam_block_list_filename',
    'compute_tokenized_bleu',
    'label_truncate',
    'text_truncate',
    'truncate',
)


class GeneratePseudoLabels(ParlaiScript):
    """``python -m anti_scaling.scripts.generate_pseudo_labels`` (see the module doc)."""

    @classmethod
    def setup_args(cls) -> ParlaiParser:
        return setup_args()

    def run(self) -> dict[str, Any]:
        opt = self.opt
        output = opt.get('output')
        if not output:
            raise DistillationError('--output is required: the .jsonl file to write')
        require_task(opt, 'the data to reply to')
        output = os.path.abspath(output)
        if os.path.exists(output) and not opt.get('overwrite'):
            raise DistillationError(
                f'{output} already exists: pass --overwrite true to replace it'
            )
        min_score = opt.get('min_teacher_score')
        fraction = float(opt.get('drop_worst_fraction') or 0.0)
        min_f1 = opt.get('min_reference_f1')
        select_replies([], min_score, fraction)  # bad filter flags fail here
        select_by_f1([], min_f1)
        mode = opt.get('history_replies') or 'gold'
        split = (opt.get('datatype') or 'train').split(':')[0]
        split_datatype(split)
        agent = create_teacher_agent(
            opt, use_reply='label' if mode == 'gold' else 'model'
        )
        generator = _Generator(agent, mode)
        with tolerant_byte_level_decoding():
            run_world(task_world(opt, agent, split), f'teacher replies ({split})')
        episodes = generator.finish()
        examples = [e for episode in episodes for e in episode]
        by_score_keep = select_replies([e.score for e in examples], min_score, fraction)
        f1s = [e.f1 for e in examples]
        by_f1_keep = select_by_f1(f1s, min_f1)
        keep = [a and b for a, b in zip(by_score_keep, by_f1_keep)]
        by_score, by_f1 = by_score_keep.count(False), by_f1_keep.count(False)
        kept, removed = cut_episodes(episodes, keep)
        n_kept = sum(len(e) for e in kept)
        lines = [conversation_line(episode) for episode in kept]
        atomic_write(
            output, lambda fh: fh.write(''.join(line + '\n' for line in lines))
        )
        summary = {
            'output': output,
            'examples': len(examples),
            'kept': n_kept,
            'dropped': len(examples) - n_kept,
            'dropped_by_score': by_score,
            'dropped_by_f1': by_f1,
            'min_reference_f1': min_f1,
            'mean_reference_f1': _mean([f for f in f1s if not math.isnan(f)]),
            'episodes': len(kept),
            'history_replies': mode,
            'min_teacher_score': min_score,
            'drop_worst_fraction': fraction,
            'mean_teacher_score': _mean([e.score for e in examples]),
        }
        teacher_path = agent.opt['model_file']
        metadata = {
            'date': str(datetime.datetime.now()),
            'opt': {
                'task': opt['task'],
                'datatype': split,
                'teacher_model': os.path.abspath(teacher_path),
                **{k: agent.opt.get(k) for k in GENERATION_KEYS},
            },
            'self_chat': False,
            'speakers': [CONTEXT_SPEAKER, TEACHER_SPEAKER],
            'version': METADATA_VERSION,
            'teacher': fp.teacher_fingerprint(teacher_path),
            'summary': summary,
        }
        atomic_write(
            metadata_path(output), lambda fh: json.dump(metadata, fh, indent=1)
        )
        filtered = keep.count(False)
        logging.info(
            f'Wrote {output}: {n_kept} of {len(examples)} examples kept, '
            f'{len(examples) - n_kept} dropped ({by_score} by the score filter, '
            f'{by_f1} by the F1 filter, {removed - filtered} more by episode cuts), '
            f'{len(kept)} episodes. Train with -t jsonfile --jsonfile-datapath {output}'
        )
        return summary


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def main(args: list[str] | None = None) -> dict[str, Any]:
    """Entry point: one line on bad input, the summary dict otherwise."""
    install_excepthook()
    return GeneratePseudoLabels.main(*(args or []))


if __name__ == '__main__':
    main()
