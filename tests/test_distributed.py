"""Several processes on gloo: the distillation agents on ParlAI's distributed engine.

Both ranks run on this machine's CPUs; the GPU-only paths (NCCL) are the same
code with another backend (docs/distributed.md says what was only reviewed).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from distributed_workers import training_steps
from helpers import TRAIN_DEFAULTS, run_batch, train

from anti_scaling.model_files import OPTIMIZER_PARAM_NAMES, PROJECTION_PREFIX
from anti_scaling.parallel.launch import run_on_ranks

NARROW = 'anti_scaling.distillation:DistillNarrowTransformerAgent'
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.dirname(os.path.abspath(__file__))
# dropout off: one process and two must compute the same function
NO_DROPOUT = {'dropout': 0.0, 'attention_dropout': 0.0, 'relu_dropout': 0.0}
TERM_METRICS = [
    'enc_loss', 'enc_hid_loss', 'dec_hid_loss', 'pred_loss', 'enc_emb_loss',
    'dec_emb_loss', 'enc_self_attn_loss', 'dec_self_attn_loss', 'enc_dec_attn_loss',
]  # fmt: skip
TERMS = {
    'hidden_loss_coeff': 1.0,
    'pred_loss_coeff': 2.0,
    'embedding_loss_coeff': 0.5,
    'self_attn_loss_coeff': 0.1,
    'enc_dec_attn_loss_coeff': 0.2,
    'encoder_loss_coeff': 1.0,
}


def _flags(options: dict) -> list[str]:
    out = []
    for key, value in options.items():
        out += ['--' + key.replace('_', '-'), str(value)]
    return out


def _equal_token_slices(per_rank: int) -> list[dict]:
    """Examples whose two halves hold the same context and label lengths.

    ParlAI's loss is a token mean per batch, and DDP averages the ranks'
    gradients: the average equals the gradient of the whole batch's token mean
    exactly when every rank counts the same tokens (the same is true of every
    distillation term).
    """
    lengths = [2 + i % 4 for i in range(per_rank)]
    out = []
    for rank_lengths in (lengths, lengths[::-1]):
        for i, n in enumerate(rank_lengths):
            words = [str(1 + (i + 2 * j + len(out)) % 6) for j in range(n)]
            out.append({'text': ' '.join(words), 'labels': [' '.join(words[::-1])]})
    return out


def _student_opt(teacher_file: str, datapath: str, model_file: str, *extra: str):
    from parlai.core.params import ParlaiParser

    args = [
        '-m', NARROW, '--teacher-model', teacher_file, '-t', 'integration_tests:reverse',
        '-mf', model_file, '--datapath', datapath,
        '--embedding-size', '16', '--ffn-size', '32', '--n-layers', '2',
        '--optimizer', 'sgd', '-lr', '0.5', '--lr-scheduler', 'none',
        *_flags(NO_DROPOUT), *extra,
    ]  # fmt: skip
    return ParlaiParser(True, True).parse_args(args)


def _train_split_examples(datapath: str, n: int) -> list[dict]:
    """The first ``n`` training examples of the task (what a teacher cache holds)."""
    from parlai.core.params import ParlaiParser
    from parlai.core.teachers import create_task_agent_from_taskname

    opt = ParlaiParser(True, False).parse_args(
        ['-t', 'integration_tests:reverse', '-dt', 'train:ordered', '-dp', datapath]
    )
    task = create_task_agent_from_taskname(opt)[0]
    acts = [task.act() for _ in range(n)]
    return [{'text': a['text'], 'labels': list(a['labels'])} for a in acts]


def _one_process(opt, init: dict, examples: list[dict]) -> dict:
    """One process, all examples in one batch, from the ranks' initial weights."""
    from parlai.core.agents import create_agent

    agent = create_agent(opt)
    agent.model.load_state_dict(init)
    run_batch(agent, examples)
    return agent.model.state_dict()


def _assert_step_matches(single: dict, init: dict, ranks: list[dict]) -> None:
    assert set(single) == set(ranks[0]) == set(init)
    moved = max((single[k] - init[k]).abs().max().item() for k in single)
    assert moved > 1e-3, 'the step did not change the student'
    for key in single:
        torch.testing.assert_close(ranks[0][key], ranks[1][key], rtol=0, atol=0)
        torch.testing.assert_close(ranks[0][key], single[key], rtol=0, atol=1e-5)


def test_two_ranks_of_batch_b_step_as_one_process_of_batch_2b(
    teacher_file, datapath, tmp_path
):
    """Every term with projections (then one on-policy step), and a teacher cache."""
    from anti_scaling.scripts import cache_teacher_outputs

    per_rank = 4
    cache = str(tmp_path / 'cache')
    build = [
        '--teacher-model', teacher_file, '-t', 'integration_tests:reverse',
        '--cache-dir', cache, '-dp', datapath, '--top-k', '4', '--chunk-size', '500',
    ]  # fmt: skip
    cache_teacher_outputs.main(build)
    cache_flags = ['--pred-loss-coeff', '1', '--teacher-cache', cache]
    unused = str(tmp_path / 'unused' / 'model')
    cases = [
        {
            'name': 'terms',
            'opt': _student_opt(teacher_file, datapath, unused, *_flags(TERMS)),
            'examples': _equal_token_slices(per_rank),
            'per_rank': per_rank,
            'on_policy': True,
        },
        {
            'name': 'cache',
            'opt': _student_opt(teacher_file, datapath, unused, *cache_flags),
            'examples': _train_split_examples(datapath, 2 * per_rank),
            'per_rank': per_rank,
        },
    ]
    out = tmp_path / 'ranks'
    run_on_ranks(training_steps, cases[0]['opt'], 2, (cases, str(out)))

    for case in cases:
        folder = out / case['name']
        facts = [json.loads((folder / f'facts_{r}.json').read_text()) for r in (0, 1)]
        for rank, fact in enumerate(facts):
            assert fact['student_wrapped'] and fact['student_device'] == 'cpu'
            examples = case['examples'][rank * per_rank : (rank + 1) * per_rank]
            assert fact['trained_on'] == [m['text'] for m in examples]
            assert {'distill_loss', 'teacher_acc', 'pred_loss'} <= set(fact['metrics'])
        init = torch.load(folder / 'init.pt')
        ranks = [torch.load(folder / f'step_{r}.pt') for r in (0, 1)]
        single = _one_process(case['opt'], init, case['examples'])
        _assert_step_matches(single, init, ranks)

    terms = [
        json.loads((out / 'terms' / f'facts_{r}.json').read_text()) for r in (0, 1)
    ]
    for fact in terms:
        assert fact['projection_names_in_ddp']  # inside the student's DDP module
        assert fact['teacher_wrapped'] is False and fact['teacher_reused'] is True
        assert fact['teacher_trainable'] == 0 and fact['teacher_in_optimizer'] == 0
        assert fact['teacher_training'] is False and fact['teacher_device'] == 'cpu'
        assert set(TERM_METRICS) <= set(fact['metrics'])
        # the on-policy step ran in both ranks (own samples), and DDP kept the
        # two students equal
        assert fact['on_policy_share'] == [1.0] * per_rank
    after = [torch.load(out / 'terms' / f'on_policy_{r}.pt') for r in (0, 1)]
    for key, value in after[0].items():
        torch.testing.assert_close(value, after[1][key], rtol=0, atol=0)
    cached = [
        json.loads((out / 'cache' / f'facts_{r}.json').read_text()) for r in (0, 1)
    ]
    assert all('cache_hits' in fact['metrics'] for fact in cached)


# A config term whose weight is 0 at step 1 only: its projection is unused in that
# step, which DDP must tolerate and Adam must skip (as in one process).
SCHEDULED_TERM = {
    'terms': [
        {
            'student': 'encoder.layers.0',
            'teacher': 'encoder.layers.1',
            'weight': 1.0,
            'schedule': [[0, 1.0], [1, 0.0], [2, 1.0]],
            'metric': 'sched_loss',
        }
    ]
}
COMPARED = [
    'exs', 'loss', 'ppl', 'token_acc', 'token_em', 'distill_loss', 'teacher_acc',
    'sched_loss', 'pred_loss', 'enc_loss', 'enc_hid_loss', 'dec_hid_loss',
    'enc_emb_loss', 'dec_emb_loss', 'enc_self_attn_loss', 'dec_self_attn_loss',
    'enc_dec_attn_loss', 'total_train_updates',
]  # fmt: skip


def _run_options(teacher_file: str, init_model: str, config: str) -> dict:
    options = {
        **TRAIN_DEFAULTS,
        'model': NARROW,
        'teacher_model': teacher_file,
        'init_model': init_model,
        'distill_config': config,
        'embedding_size': 16,
        'ffn_size': 32,
        'n_layers': 2,
        # the same batches in both ranks and in one process: DDP's average of
        # two equal gradients is the one-process gradient
        'datatype': 'train:ordered',
        'batchsize': 4,
        'eval_batchsize': 1,
        'max_train_steps': 3,
        'validation_max_exs': 16,
        'log_every_n_steps': 1,
        **NO_DROPOUT,
        **TERMS,
    }
    options.pop('seed')
    return options


def _final_report(model_file: str) -> dict:
    with open(model_file + '.trainstats') as fh:
        return json.load(fh)['final_valid_report']


def _weights(model_file: str) -> dict:
    return torch.load(model_file, weights_only=False)['model']


def _assert_same_weights(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-5, msg=key)


def _one_process_run(teacher_file: str, datapath: str, tmp_path) -> tuple[dict, str]:
    """The run's options (starting from saved weights) and its one-process result."""
    from parlai.core.agents import create_agent

    config = tmp_path / 'terms.json'
    config.write_text(json.dumps(SCHEDULED_TERM))
    init_model = str(tmp_path / 'init' / 'model')
    os.makedirs(os.path.dirname(init_model))
    options = _run_options(teacher_file, init_model, str(config))
    start_opt = _student_opt(teacher_file, datapath, init_model, *_flags(TERMS))
    start_opt['distill_config'] = str(config)
    create_agent(start_opt).save(init_model)  # every run starts from these weights
    one = str(tmp_path / 'one' / 'model')
    train(datapath, model_file=one, **options)
    return options, one


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS='1')
    env['PYTHONPATH'] = os.pathsep.join([REPO, TESTS, env.get('PYTHONPATH', '')])
    return env


def _run(command: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        command, env=_env(), capture_output=True, text=True, timeout=300
    )


def _assert_same_run(one: str, other: str, steps: int) -> None:
    """Same valid metrics, weights and files as the one-process run."""
    reports = {'one': _final_report(one), 'other': _final_report(other)}
    for name in COMPARED:
        assert name in reports['one'], name
        assert reports['other'][name] == pytest.approx(reports['one'][name], rel=1e-4)
    assert reports['other']['exs'] == 16
    assert reports['other']['total_train_updates'] == steps
    _assert_same_weights(_weights(one), _weights(other))
    # the optimised parameters are named as in the student (no DDP 'module.'),
    # so stripping finds the projections' optimizer state
    names = [
        torch.load(f, weights_only=False)[OPTIMIZER_PARAM_NAMES] for f in (one, other)
    ]
    assert names[0] == names[1] and any(
        n.startswith(PROJECTION_PREFIX) for n in names[1]
    )
    # rank 0 wrote ParlAI's files, the same set as one process
    assert sorted(os.listdir(os.path.dirname(other))) == sorted(
        os.listdir(os.path.dirname(one))
    )


def test_two_process_run_reports_one_process_metrics_and_resumes_in_one(
    teacher_file, datapath, tmp_path
):
    options, one = _one_process_run(teacher_file, datapath, tmp_path)
    two = str(tmp_path / 'two' / 'model')
    done = _run(
        [
            sys.executable, '-m', 'anti_scaling.scripts.multiprocessing_train',
            '--distributed-world-size', '2', '--distributed-backend', 'gloo',
            '-mf', two, '--datapath', datapath, *_flags(options),
        ]
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert 'Distributed group initialized (gloo, 2 processes)' in done.stdout
    _assert_same_run(one, two, steps=3)
    before = _final_report(two)['loss']

    # the two-process checkpoint resumes in one process exactly like the other
    for model_file in (one, two):
        train(datapath, model_file=model_file, **{**options, 'max_train_steps': 4})
        with open(model_file + '.trainstats') as fh:
            assert json.load(fh)['train_steps'] == 4
    _assert_same_run(one, two, steps=4)
    assert _final_report(two)['loss'] != before  # it did train on


@pytest.mark.slow
def test_torchrun_on_two_nodes_matches_one_process(teacher_file, datapath, tmp_path):
    """Two torchrun "nodes" of one process each (both LOCAL_RANK 0), env:// rendezvous."""
    from parlai.utils.distributed import find_free_port

    options, one = _one_process_run(teacher_file, datapath, tmp_path)
    model_file = str(tmp_path / 'torchrun' / 'model')
    port = str(find_free_port())
    nodes = []
    for node in ('1', '0'):
        command = [
            sys.executable, '-m', 'torch.distributed.run', '--nnodes', '2',
            '--node-rank', node, '--nproc-per-node', '1', '--master-addr',
            '127.0.0.1', '--master-port', port,
            '-m', 'anti_scaling.scripts.torchrun_train',
            '-mf', model_file, '--datapath', datapath, *_flags(options),
        ]  # fmt: skip
        nodes.append(
            subprocess.Popen(
                command, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
        )
    outputs = [node.communicate(timeout=300) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs[1][1][-3000:]
    assert b'Distributed group initialized (gloo, 2 processes)' in outputs[1][0]
    _assert_same_run(one, model_file, steps=3)


@pytest.mark.slow
def test_bad_distillation_option_in_a_launched_run_is_one_line(
    teacher_file, datapath, tmp_path
):
    """Every rank refuses it; rank 0 says it once; nothing is written."""
    done = _run(
        [
            sys.executable, '-m', 'anti_scaling.scripts.multiprocessing_train',
            '--distributed-world-size', '2', '-m', NARROW,
            '--teacher-model', teacher_file, '-t', 'integration_tests:reverse',
            '--datapath', datapath, '-mf', str(tmp_path / 'student' / 'model'),
            '--embedding-size', '20', '--n-heads', '3',
        ]
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        'anti_scaling: error: --embedding-size 20 is not a multiple of --n-heads 3'
    )
    assert 'Traceback' not in done.stderr
    assert not (tmp_path / 'student').exists()
