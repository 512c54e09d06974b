"""Functions the distributed tests run in spawned ranks (importable by the children)."""

from __future__ import annotations

import json
import os

import torch
from helpers import run_batch


def training_steps(rank_opt, cases: list[dict], out_dir: str) -> None:
    """For each case, build its student in this rank and train on the rank's slice.

    A case holds ``name``, ``opt`` (the student's options), ``examples`` and
    ``per_rank``: rank ``r`` trains one step on ``examples[r * per_rank:(r + 1) *
    per_rank]``, then, with ``on_policy``, one more step on the student's own
    samples. Written to ``out_dir/NAME/``: rank 0's initial weights
    (``init.pt``), every rank's weights after the first step (``step_R.pt``) and
    after the on-policy step (``on_policy_R.pt``), and facts about its teacher,
    optimizer and metrics (``facts_R.json``).
    """
    from parlai.core.agents import create_agent
    from parlai.core.opt import Opt
    from torch.nn.parallel import DistributedDataParallel

    from anti_scaling.parallel.ddp import unwrap_model

    rank = rank_opt['rank']
    for case in cases:
        folder = os.path.join(out_dir, case['name'])
        os.makedirs(folder, exist_ok=True)
        opt = Opt({**case['opt'], 'rank': rank, 'gpu': rank_opt['gpu']})
        opt['override'] = {**opt.get('override', {}), 'gpu': rank_opt['gpu']}
        agent = create_agent(opt)
        student = unwrap_model(agent.model)
        if rank == 0:
            torch.save(student.state_dict(), os.path.join(folder, 'init.pt'))
        optimised = {
            id(p) for group in agent.optimizer.param_groups for p in group['params']
        }
        teacher = agent.teacher.model
        facts = {
            'student_wrapped': isinstance(agent.model, DistributedDataParallel),
            'projection_names_in_ddp': sorted(
                name
                for name, _ in agent.model.named_parameters()
                if name.startswith('module.distill_projections.')
            ),
        }
        if teacher is not None:
            facts.update(
                teacher_wrapped=isinstance(teacher, DistributedDataParallel)
                or hasattr(teacher, 'module'),
                teacher_trainable=sum(p.requires_grad for p in teacher.parameters()),
                teacher_in_optimizer=sum(
                    id(p) in optimised for p in teacher.parameters()
                ),
                teacher_training=teacher.training,
                teacher_device=str(next(teacher.parameters()).device),
                # a second agent in this rank (ParlAI builds one to reload the
                # best model) reuses the rank's teacher
                teacher_reused=create_agent(opt).teacher.model is teacher,
            )
        facts['student_device'] = str(next(student.parameters()).device)
        per_rank = case['per_rank']
        mine = case['examples'][rank * per_rank : (rank + 1) * per_rank]
        run_batch(agent, mine)
        facts['metrics'] = sorted(agent._local_metrics)
        facts['trained_on'] = [m['text'] for m in mine]
        torch.save(student.state_dict(), os.path.join(folder, f'step_{rank}.pt'))
        if case.get('on_policy'):
            agent.on_policy.fraction = 1.0
            run_batch(agent, mine)
            on_policy = agent._local_metrics.get('on_policy', [])
            facts['on_policy_share'] = [m.value() for m in on_policy]
            torch.save(
                student.state_dict(), os.path.join(folder, f'on_policy_{rank}.pt')
            )
        with open(os.path.join(folder, f'facts_{rank}.json'), 'w') as fh:
            json.dump(facts, fh)
