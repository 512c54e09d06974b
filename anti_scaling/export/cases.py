"""The verification cases every export is checked on, and ParlAI's own replies to them.

A case is one labelled example of a ParlAI task as the model's own agent
observes it in ``parlai eval_model`` (its context and label ids) together with
the raw turns behind it, so that an export can rebuild the ids from text and
be compared with ParlAI token for token. The Hugging Face export
(:mod:`.hf.verify`) and the CTranslate2 export (:mod:`.ct2.verify`) read the
same cases and the same ParlAI replies.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..report.evaluation import batches, open_task

#: The task exports are verified on unless told otherwise (offline).
DEFAULT_TASK = 'anti_scaling.tasks.chitchat'


@dataclass
class Case:
    """One example: ParlAI's observation (its ids) and the raw turns behind it."""

    observation: Any
    turns: list[str]
    label: str


def collect_cases(agent: Any, task: Any, limit: int) -> list[Case]:
    """The first ``limit`` labelled examples, observed by a copy of ``agent``."""
    from parlai.core.agents import create_agent_from_shared
    from parlai.core.message import Message

    copy = create_agent_from_shared(agent.share())
    cases: list[Case] = []
    while len(cases) < limit:
        msg = task.act()
        if not msg or 'text' not in msg:
            break
        obs = copy.observe(Message(msg))
        labels = obs.get('eval_labels') or obs.get('labels')
        if labels and obs.get('text_vec') is not None:
            turns = list(copy.history.history_raw_strings)
            cases.append(Case(obs, turns, labels[0]))
        copy.self_observe(Message({'text': '', 'episode_done': True}))
        if task.epoch_done():
            break
    return cases


def task_cases(
    agent: Any,
    task: str,
    datatype: str,
    datapath: str,
    examples: int,
    task_args: Any = (),
) -> list[Case]:
    """:func:`collect_cases` on ``task``; the task is opened as ``eval_model`` would."""
    return collect_cases(
        agent, open_task(task, datatype, datapath, task_args), examples
    )


def parlai_replies(agent: Any, cases: list[Case], beam: int = 1) -> list[list[int]]:
    """ParlAI's replies (token ids after the start token, end included).

    ``beam`` 1: ``--inference greedy``; more: ``--inference beam`` with that
    beam size and the model's own beam options (minimum length, length
    penalty, n-gram blocking).
    """
    from parlai.core.agents import create_agent_from_shared
    from parlai.core.opt import Opt

    shared = agent.share()
    inference = 'greedy' if beam == 1 else 'beam'
    shared['opt'] = Opt({**agent.opt, 'inference': inference, 'beam_size': beam})
    searcher = create_agent_from_shared(shared)
    searcher.model.eval()
    limit = searcher.label_truncate or 256
    replies = []
    for chunk in batches(cases, 10):
        batch = searcher.batchify([c.observation for c in chunk])
        with torch.no_grad():
            preds, _ = searcher._generate(batch, beam, limit)
        for tokens, _score, *_ in preds:
            tokens = tokens.tolist()
            replies.append(
                tokens[1:] if tokens and tokens[0] == searcher.START_IDX else tokens
            )
    return replies


def parlai_greedy(agent: Any, cases: list[Case]) -> list[list[int]]:
    """ParlAI's greedy replies (:func:`parlai_replies` with beam 1)."""
    return parlai_replies(agent, cases, 1)


def parlai_label_log_probs(agent: Any, cases: list[Case]) -> list[list[float]]:
    """ParlAI's log-probability of each label token (end token included), per case."""
    d = agent.dict
    pad = d[d.null_token]
    out = []
    for chunk in batches(cases, 10):
        labels = [c.observation['eval_labels_vec'].tolist() for c in chunk]
        texts = [c.observation['text_vec'].tolist() for c in chunk]
        xs = _pad(texts, pad)
        ys = _pad(labels, pad)
        with torch.no_grad():
            logits = agent.model(xs, ys=ys)[0].float()
        log_probs = torch.log_softmax(logits, -1)
        for i, y in enumerate(labels):
            picked = log_probs[i, torch.arange(len(y)), torch.tensor(y)]
            out.append(picked.tolist())
    return out


def _pad(rows: list[list[int]], pad: int) -> torch.Tensor:
    out = torch.full((len(rows), max(len(r) for r in rows)), pad, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.as_tensor(row, dtype=torch.long)
    return out


def parlai_text(agent: Any, tokens: list[int]) -> str | None:
    """ParlAI's text of a reply; ``None`` where ParlAI's own decoder fails.

    ParlAI's byte-level BPE decoder asserts that a reply starts with a space
    when the dictionary adds one, which an untrained model's reply may not.
    """
    try:
        return agent._v2t(tokens)
    except AssertionError:
        return None
