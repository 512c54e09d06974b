"""Helpers for the tests: in-process ParlAI runs on offline data."""

from __future__ import annotations

import json
from typing import Any

from parlai.agents.bart.bart import BartAgent
from parlai.core.opt import Opt

TASK = 'integration_tests:reverse'
# Options shared by every training run of the tests: small, fast, deterministic.
TRAIN_DEFAULTS: dict[str, Any] = {
    'task': TASK,
    'optimizer': 'adam',
    'learningrate': 1e-3,
    'lr_scheduler': 'none',
    'skip_generation': True,
    'validation_every_n_epochs': -1,
    'log_every_n_steps': 5,
    'log_every_n_secs': -1,
    'short_final_eval': True,
    'validation_max_exs': 32,
    'seed': 0,
}


class ScratchBartAgent(BartAgent):
    """BART trained from scratch: never downloads bart_large (tests only)."""

    def _initialize_bart(self, opt: Opt) -> Opt:
        return opt


def train(datapath: str, **kwargs: Any) -> tuple[dict, dict]:
    """Run `parlai train_model` in-process; returns the (valid, test) reports.

    Seeded first: ParlAI seeds only after it has built the model, so its initial
    weights would otherwise depend on what ran before in the process.
    """
    import random

    import torch
    from parlai.scripts.train_model import TrainModel

    random.seed(0)
    torch.manual_seed(0)
    options = {**TRAIN_DEFAULTS, 'datapath': datapath, **kwargs}
    return TrainModel.main(**options)


def train_reports(model_file: str) -> list[dict]:
    """The train-time reports ParlAI logged for a model (its .trainstats)."""
    with open(model_file + '.trainstats') as fh:
        return json.load(fh)['train_reports']


def read_opt(model_file: str) -> dict:
    with open(model_file + '.opt') as fh:
        return json.load(fh)


def make_agent(args: list[str], datapath: str):
    """Build an agent from command-line style arguments, as `parlai` scripts do."""
    from parlai.core.agents import create_agent
    from parlai.core.params import ParlaiParser

    parser = ParlaiParser(True, True)
    opt = parser.parse_args([*args, '--datapath', datapath])
    return create_agent(opt)


def reverse_examples(n: int, length: int = 4, seed: int = 0) -> list[dict]:
    """Messages like integration_tests:reverse (digits and their reversal)."""
    import random

    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = [str(rng.randint(1, 6)) for _ in range(rng.randint(2, length))]
        out.append({'text': ' '.join(words), 'labels': [' '.join(reversed(words))]})
    return out


def run_batch(agent, messages: list[dict]) -> list:
    """One batch_act over fresh shared copies of ``agent`` (one per message)."""
    from parlai.core.agents import create_agent_from_shared
    from parlai.core.message import Message

    copies = [create_agent_from_shared(agent.share()) for _ in messages]
    observations = [
        c.observe(Message({**m, 'episode_done': True}))
        for c, m in zip(copies, messages)
    ]
    return agent.batch_act(observations)
