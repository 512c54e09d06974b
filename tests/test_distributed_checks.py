"""Distributed set-ups that cannot work stop with one line before any work; the parts
of anti_scaling.parallel that need no second process, checked in this one."""

from __future__ import annotations

import json
import re
import shutil
import sys
import types

import pytest
import torch
import torch.distributed as dist
from helpers import make_agent, read_opt, train
from torch import nn
from torch.multiprocessing import ProcessRaisedException
from torch.nn.parallel import DistributedDataParallel

from anti_scaling.errors import DistillationError
from anti_scaling.parallel import backends, checks, ddp, launch, teacher_placement
from anti_scaling.parallel.collectives import gloo_compatible_parlai
from anti_scaling.parallel.torchrun import read_torchrun_env
from anti_scaling.scripts import multiprocessing_train, torchrun_train

NARROW = 'anti_scaling.distillation:DistillNarrowTransformerAgent'


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith('anti_scaling: error: '), err
    assert '\n' not in err and 'Traceback' not in err
    return err


def _launch_args(teacher_file, datapath, tmp_path, *extra):
    return [
        '-m', NARROW, '--teacher-model', teacher_file, '-t', 'integration_tests:reverse',
        '-mf', str(tmp_path / 'student' / 'model'), '--datapath', datapath, *extra,
    ]  # fmt: skip


@pytest.mark.parametrize(
    'extra, message',
    [
        (
            ['--distributed-world-size', '2', '--distributed-backend', 'nccl'],
            'nccl needs CUDA GPUs, but no CUDA GPU is visible: use '
            '--distributed-backend gloo',
        ),
        ([], '--distributed-world-size N is required'),
        (
            ['--distributed-world-size', '2', '--ddp-backend', 'zero3'],
            r'--ddp-backend zero3 \(FSDP\) is not supported .* use --ddp-backend ddp',
        ),
    ],
)
def test_launcher_refuses_before_starting_anything(
    teacher_file, datapath, tmp_path, capsys, monkeypatch, extra, message
):
    started = []
    monkeypatch.setattr(
        launch.torch_mp, 'start_processes', lambda *a, **k: started.append(a)
    )
    args = _launch_args(teacher_file, datapath, tmp_path, *extra)
    assert multiprocessing_train.main(*args) == 2
    assert started == []
    assert re.search(message, _one_line(capsys))
    assert not (tmp_path / 'student').exists()


def test_torchrun_script_needs_torchrun(
    teacher_file, datapath, tmp_path, capsys, monkeypatch
):
    for name in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT'):
        monkeypatch.delenv(name, raising=False)
    assert torchrun_train.main(*_launch_args(teacher_file, datapath, tmp_path)) == 2
    err = _one_line(capsys)
    assert 'RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT not set' in err
    assert 'torchrun' in err and not (tmp_path / 'student').exists()


def test_torchrun_environment_is_read_and_checked():
    env = {'MASTER_ADDR': 'h', 'MASTER_PORT': '1', 'RANK': '3', 'WORLD_SIZE': '4'}
    found = read_torchrun_env({**env, 'LOCAL_RANK': '1'})
    assert (found.rank, found.world_size, found.local_rank) == (3, 4, 1)
    with pytest.raises(DistillationError, match='LOCAL_RANK not set'):
        read_torchrun_env(env)
    with pytest.raises(DistillationError, match="WORLD_SIZE='two' is not an integer"):
        read_torchrun_env({**env, 'LOCAL_RANK': '0', 'WORLD_SIZE': 'two'})
    with pytest.raises(DistillationError, match='do not describe a process'):
        read_torchrun_env({**env, 'LOCAL_RANK': '0', 'RANK': '4'})


def test_backend_choice_and_gpu_count(monkeypatch):
    cpu = backends.choose_placement({})
    assert cpu == backends.Placement('gloo', False) and cpu.device_index(1) == -1
    with pytest.raises(DistillationError, match='--no-cuda is set'):
        backends.choose_placement({'no_cuda': True, 'distributed_backend': 'nccl'})
    with pytest.raises(DistillationError, match='choose one of auto, nccl, gloo'):
        backends.choose_placement({'distributed_backend': 'mpi'})
    # what a GPU host would answer (the checks run before any CUDA call)
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 2)
    monkeypatch.setattr(dist, 'is_nccl_available', lambda: True)
    gpu = backends.choose_placement({})
    assert gpu == backends.Placement('nccl', True) and gpu.device_index(1) == 1
    assert backends.choose_placement({'no_cuda': True}).backend == 'gloo'
    backends.check_ranks_per_host(gpu, 2)
    with pytest.raises(DistillationError, match='3 processes on this host but only 2'):
        backends.check_ranks_per_host(gpu, 3)


def test_parallel_options_refused_only_where_they_take_effect(monkeypatch):
    for backend in ('zero2', 'zero3'):
        checks.check_parallel_options({'ddp_backend': backend}, distributed=False)
        with pytest.raises(DistillationError, match=f'--ddp-backend {backend}'):
            checks.check_parallel_options({'ddp_backend': backend}, distributed=True)
    checks.check_parallel_options({'ddp_backend': 'ddp'}, distributed=True)
    # ParlAI ignores --model-parallel on a CPU; on GPUs it would split batches
    checks.check_parallel_options({'model_parallel': True}, distributed=True)
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    with pytest.raises(
        DistillationError, match='--model-parallel true is not supported'
    ):
        checks.check_parallel_options({'model_parallel': True}, distributed=False)
    checks.check_parallel_options({'model_parallel': True, 'no_cuda': True}, False)


def test_model_parallel_student_stops_before_any_work_on_gpus(
    teacher_file, datapath, tmp_path, monkeypatch
):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    with pytest.raises(DistillationError, match='--model-parallel false') as info:
        train(
            datapath,
            model=NARROW,
            teacher_model=teacher_file,
            model_file=str(tmp_path / 'student' / 'model'),
            model_parallel=True,
            n_layers=2,
            embedding_size=16,
            ffn_size=32,
        )
    assert '\n' not in str(info.value)
    assert not (tmp_path / 'student').exists()


def test_teacher_is_built_whole_on_the_students_device(
    teacher_file, datapath, tmp_path
):
    # a teacher saved by a model-parallel or multi-process run names its GPU layout
    folder = tmp_path / 'teacher'
    folder.mkdir()
    for suffix in ('', '.opt', '.dict'):
        shutil.copy(teacher_file + suffix, str(folder / 'model') + suffix)
    saved = read_opt(str(folder / 'model'))
    saved.update(model_parallel=True, gpu=3)
    (folder / 'model.opt').write_text(json.dumps(saved))
    agent = make_agent(
        [
            '-m', NARROW, '--teacher-model', str(folder / 'model'),
            '-mf', str(tmp_path / 's' / 'model'), '--model-parallel', 'true',
            '--n-layers', '2', '--embedding-size', '16', '--ffn-size', '32',
        ],
        datapath,
    )  # fmt: skip
    teacher_opt = agent.teacher.opt
    assert teacher_opt['model_parallel'] is False and teacher_opt['gpu'] == -1
    assert not agent.model_parallel  # ParlAI ignores --model-parallel on a CPU
    assert {p.device.type for p in agent.teacher.model.parameters()} == {'cpu'}


def test_teacher_on_another_device_is_one_line():
    teacher = nn.Linear(2, 2, device='meta')
    with pytest.raises(DistillationError) as info:
        teacher_placement.check_teacher_device(teacher, torch.device('cpu'), 'T/model')
    assert str(info.value).startswith(
        'teacher T/model is on meta but the student is on cpu: both must share'
    )
    teacher_placement.check_teacher_device(nn.Linear(2, 2), torch.device('cpu'), 'T')
    assert teacher_placement.teacher_overrides({'gpu': 2, 'no_cuda': False}) == {
        'no_cuda': False,
        'gpu': 2,
        'model_parallel': False,
        'data_parallel': False,
    }


def test_a_failing_rank_is_reported_as_its_own_one_line_error():
    raised = ProcessRaisedException(
        'Traceback (most recent call last):\n  File "x.py", line 1\n'
        'anti_scaling.errors.DistillationError: --foo is wrong: use --bar\n',
        error_index=0,
        error_pid=123,
    )
    error = launch._child_error(raised, rank_offset=1)
    assert isinstance(error, DistillationError)
    assert str(error) == '--foo is wrong: use --bar'
    other = launch._child_error(
        ProcessRaisedException('Traceback...\nRuntimeError: boom\n', 1, 7), 1
    )
    assert str(other) == 'process of rank 2 failed: RuntimeError: boom'


@pytest.fixture
def one_rank_group(tmp_path):
    """A real process group of one process (gloo), as a launcher's rank sees it."""
    dist.init_process_group(
        'gloo', init_method=f'file://{tmp_path}/store', rank=0, world_size=1
    )
    try:
        with gloo_compatible_parlai():
            yield
    finally:
        dist.destroy_process_group()


def test_teacher_built_alone_is_never_wrapped_or_synced(
    one_rank_group, teacher_file, datapath, monkeypatch
):
    import parlai.core.torch_generator_agent as tga
    import parlai.utils.distributed as parlai_dist
    import parlai.utils.fsdp as fsdp
    from parlai.core.agents import create_agent_from_opt_file

    from anti_scaling.model_files import model_file_opt

    collectives = []
    all_reduce = dist.all_reduce
    monkeypatch.setattr(
        dist, 'all_reduce', lambda *a, **k: collectives.append(1) or all_reduce(*a, **k)
    )

    def build():
        collectives.clear()
        opt = model_file_opt(teacher_file, datapath, {'datatype': 'valid'})
        return create_agent_from_opt_file(opt).model

    assert parlai_dist.is_distributed()
    # what ParlAI does to any agent built in a distributed run: sync and wrap
    assert isinstance(build(), DistributedDataParallel) and collectives
    with teacher_placement.building_local_model():
        assert not parlai_dist.is_distributed() and not fsdp.is_distributed()
        assert not tga.is_distributed()
        teacher = build()
        # a parlai module first imported here runs `from parlai.utils.distributed
        # import is_distributed` and copies the stand-in: restored on exit too
        late = types.ModuleType('parlai_imported_late')
        late.is_distributed = parlai_dist.is_distributed
        monkeypatch.setitem(sys.modules, late.__name__, late)
    assert not isinstance(teacher, DistributedDataParallel) and not collectives
    assert late.is_distributed is parlai_dist.is_distributed and late.is_distributed()
    assert parlai_dist.is_distributed() and tga.is_distributed()  # restored


def test_unused_parameters_get_zero_gradients_for_ddp_then_none(one_rank_group):
    projections = nn.ModuleDict({'used': nn.Linear(3, 1), 'idle': nn.Linear(3, 1)})
    model = nn.ModuleDict({'body': nn.Linear(3, 3), 'distill_projections': projections})
    wrapped = DistributedDataParallel(model)
    assert ddp.unwrap_model(wrapped) is model and ddp.unwrap_model(model) is model
    x = torch.randn(4, 3)
    loss = projections['used'](model['body'](x)).pow(2).mean()
    anchored, unused = ddp.anchor_unused_modules(wrapped, loss, projections, {'used'})
    assert anchored.item() == loss.item()
    assert {id(p) for p in unused} == {id(p) for p in projections['idle'].parameters()}
    anchored.backward()
    assert all(torch.equal(p.grad, torch.zeros_like(p)) for p in unused)
    assert all(p.grad.abs().sum() > 0 for p in projections['used'].parameters())
    ddp.release_gradients(unused)
    assert all(p.grad is None for p in unused)
    # one process, or nothing unused: nothing to anchor
    plain = projections['used'](x).sum()
    assert ddp.anchor_unused_modules(model, plain, projections, set()) == (plain, [])
    both = {'used', 'idle'}
    assert ddp.anchor_unused_modules(wrapped, plain, projections, both) == (plain, [])
