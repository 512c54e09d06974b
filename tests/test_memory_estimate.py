"""The memory formulas against real ParlAI models and real distillation steps.

Parameter counts are compared exactly (the BlenderBot shapes on the meta
device, which allocates nothing); the bytes autograd saves for backward are
measured with ``saved_tensors_hooks`` on the CPU, in float32 and in float16
(ParlAI's ``--fp16`` halves the model; done by hand here, as ParlAI does it only
on CUDA), and compared within 1%; the peak of a whole training step is measured
in a fresh process (within 5%).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from memory_support import (
    SavedTensors,
    blender_like_teacher,
    full_batch,
    storage_bytes,
    student_agent,
)
from parlai.agents.transformer.modules import TransformerGeneratorModel
from parlai.agents.transformer.transformer import TransformerGeneratorAgent
from parlai.core.dict import DictionaryAgent
from parlai.core.params import ParlaiParser
from parlai.utils.fp16 import FP16SafeCrossEntropy

import anti_scaling.agents.mixin as mixin
from anti_scaling.errors import DistillationError
from anti_scaling.report.memory import (
    Dropouts,
    ModelShape,
    StepBatch,
    logits_bytes,
    precision,
    step_activation_bytes,
    training_state_bytes,
)
from anti_scaling.report.memory_recipes import Setting, estimate, recipe_plan, shapes
from anti_scaling.report.memory_terms import term_memory, topk_memory

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
HALF = {'fp32': torch.float32, 'fp16': torch.float16}


def parlai_model(vocab: int, *args: str, device: str = 'cpu'):
    parser = ParlaiParser(False, False)
    TransformerGeneratorAgent.add_cmdline_args(parser, partial_opt=None)
    opt = parser.parse_args(list(args))
    dictionary = DictionaryAgent(opt)
    for i in range(vocab - len(dictionary)):
        dictionary.add_token(f'w{i}')
    torch.manual_seed(0)
    with torch.device(device):
        model = TransformerGeneratorModel(opt, dictionary)
    return model, opt, len(dictionary)


def count(model, trainable: bool = False) -> int:
    return sum(
        p.numel() for p in model.parameters() if p.requires_grad or not trainable
    )


@pytest.mark.parametrize(
    'args',
    [
        ['--variant', 'prelayernorm'],
        ['--variant', 'aiayn', '--learn-positional-embeddings', 'true'],
        ['--variant', 'xlm', '--n-segments', '2', '--n-positions', '40'],
    ],
)
def test_parameter_counts_are_exact(args):
    model, opt, vocab = parlai_model(
        37, '--embedding-size', '24', '--ffn-size', '40', '--n-heads', '4',
        '--n-encoder-layers', '2', '--n-decoder-layers', '3', *args,
    )  # fmt: skip
    shape = ModelShape.from_opt(opt, vocab)
    assert shape.parameters() == count(model)
    assert shape.trainable_parameters() == count(model, trainable=True)


@pytest.mark.parametrize('recipe', ['blender_400Mdistill', 'blender_1Bdistill'])
def test_blenderbot_parameter_counts_on_the_meta_device(recipe):
    teacher, student = shapes(recipe, Setting())
    # BlenderBot 2.7B, by hand: 2 x 78,676,480 + 24 x 104,906,240 per layer,
    # 8008 x 2560 token embeddings, 2 x 128 x 2560 positions, 2 x 2 x 2560 norms
    assert teacher.parameters() == 2_696_268_800
    for shape in (teacher, student):
        model, _, _ = parlai_model(
            shape.vocab_size, '--embedding-size', str(shape.embedding_size),
            '--ffn-size', str(shape.ffn_size), '--n-heads', str(shape.n_heads),
            '--n-encoder-layers', str(shape.n_encoder_layers),
            '--n-decoder-layers', str(shape.n_decoder_layers),
            '--n-positions', '128', '--variant', 'prelayernorm', device='meta',
        )  # fmt: skip
        assert shape.parameters() == count(model)
        assert shape.trainable_parameters() == count(model, trainable=True)
    projections = recipe_plan(recipe, 'recipe').projections
    if recipe == 'blender_400Mdistill':
        # embedding (2) and hidden (2 + 12) terms, each Linear(1280, 2560)
        assert len(projections) == 16
        assert student.parameters() == 364_802_560
    else:
        assert projections == {}
        assert student.parameters() == 1_437_393_920


def test_training_state_per_parameter():
    # ParlAI's adam is AMSGrad: 3 float32 states (12 bytes) per parameter
    assert sum(training_state_bytes(10, 0, 'fp32').values()) == 10 * (4 + 4 + 12)
    assert sum(training_state_bytes(10, 0, 'safe').values()) == 10 * (2 + 2 + 8 + 12)
    assert sum(training_state_bytes(10, 3, 'mem_efficient').values()) == (
        10 * (2 + 2 + 12) + 3 * 2
    )
    with pytest.raises(DistillationError, match='unknown training mode'):
        training_state_bytes(1, 0, 'bf16')


BLENDER = ['--variant', 'prelayernorm', '--activation', 'gelu', '--dropout', '0.1']


@pytest.mark.parametrize('dtype', ['fp32', 'fp16'])
@pytest.mark.parametrize(
    'extra',
    [
        [],
        ['--attention-dropout', '0.1', '--relu-dropout', '0.2'],
        ['--activation', 'relu', '--dropout', '0'],
        ['--learn-positional-embeddings', 'true'],
    ],
)
def test_saved_activations_of_parlais_step(dtype, extra):
    model, opt, vocab = parlai_model(
        50, '--embedding-size', '32', '--ffn-size', '48', '--n-heads', '4',
        '--n-encoder-layers', '2', '--n-decoder-layers', '3', '--n-positions', '32',
        *BLENDER, *extra,
    )  # fmt: skip
    model = model.to(HALF[dtype]).train()
    batch = full_batch(3, 10, 7, vocab)
    criterion = FP16SafeCrossEntropy(ignore_index=0, reduction='none')
    with SavedTensors(model) as saved:
        scores, *_ = model(batch.text_vec, ys=batch.label_vec)
        criterion(scores.view(-1, vocab), batch.label_vec.view(-1)).sum()
    expected = step_activation_bytes(
        ModelShape.from_opt(opt, vocab),
        StepBatch(3, 10, 7),
        precision(dtype, 'cpu'),
        Dropouts.from_opt(opt),
    )
    assert saved.total == pytest.approx(sum(expected.values()), abs=8)


def test_gpu_encoder_layer_differs_in_masks_and_statistics():
    shape = ModelShape(1, 1, 64, 256, 4, 100, 128)
    batch = StepBatch(2, 16, 8)
    cpu = step_activation_bytes(shape, batch, precision('fp16', 'cpu'), Dropouts())
    gpu = step_activation_bytes(shape, batch, precision('fp16', 'cuda'), Dropouts())
    # per encoder layer: 2 dropout masks of B S d (2 -> 1 byte) and 4 B S statistics
    # (2 -> 4 bytes)
    assert (
        cpu['encoder layers'] - gpu['encoder layers']
        == 2 * 2 * 16 * 64 - 4 * 2 * 16 * 2
    )


@pytest.fixture(scope='module')
def blender_teacher(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp('memory_teacher'))
    return folder, blender_like_teacher(folder, 60, 32, 4)


RECIPE_ARGS = {
    'blender_400Mdistill': [
        '--n-decoder-layers', '2', '--embedding-size', '16', '--ffn-size', '32',
        '--n-heads', '4',
    ],
    'blender_1Bdistill': ['--n-decoder-layers', '2'],
    'shared': ['--n-decoder-layers', '2', '--share-teacher-encoder', 'true'],
    'shared_frozen': [
        '--n-decoder-layers', '2', '--share-teacher-encoder', 'true',
        '--freeze-encoder', 'true',
    ],
}  # fmt: skip


def _held_tensors(monkeypatch) -> dict:
    """Record the teacher targets and the student's captured tensors of a step."""
    held = {}
    targets = mixin.DistillationMixin._teacher_targets
    evaluate = mixin.evaluate_plan

    def teacher_targets(self, *args, **kwargs):
        states, output, cached = targets(self, *args, **kwargs)
        held['teacher'] = [*states.values(), *(output or ())]
        return states, output, cached

    def evaluate_plan(plan, student_states, *args, **kwargs):
        held['student'] = list(student_states.values())
        return evaluate(plan, student_states, *args, **kwargs)

    monkeypatch.setattr(mixin.DistillationMixin, '_teacher_targets', teacher_targets)
    monkeypatch.setattr(mixin, 'evaluate_plan', evaluate_plan)
    return held


@pytest.mark.parametrize('dtype', ['fp32', 'fp16'])
@pytest.mark.parametrize('recipe', sorted(RECIPE_ARGS))
def test_distillation_step_against_the_formulas(
    recipe, dtype, blender_teacher, monkeypatch, tmp_path
):
    folder, teacher_file = blender_teacher
    name = 'blender_1Bdistill' if recipe.startswith('shared') else recipe
    agent = student_agent(str(tmp_path), teacher_file, name, *RECIPE_ARGS[recipe])
    if dtype == 'fp16':  # what ParlAI's --fp16 does on CUDA
        agent.model.half()
        agent.criterion = FP16SafeCrossEntropy(
            ignore_index=agent.NULL_IDX, reduction='none'
        )
    agent.model.train()
    vocab = len(agent.dict)
    batch = full_batch(3, 12, 9, vocab)
    held = _held_tensors(monkeypatch)
    # the teacher is loaded once per process: give it back in float32
    agent.teacher.model.to(HALF[dtype])
    try:
        with SavedTensors(agent.model, agent.teacher.model) as saved:
            agent.compute_loss(batch)
    finally:
        agent.teacher.model.float()
    p = precision(dtype, 'cpu')
    student = ModelShape.from_opt(agent.opt, vocab)
    teacher = ModelShape.from_opt(agent.teacher.opt, vocab)
    shape = StepBatch(3, 12, 9)
    step = step_activation_bytes(student, shape, p, Dropouts.from_opt(agent.opt))
    if recipe == 'shared_frozen':
        from anti_scaling.report.memory_recipes import _without_encoder_training

        step = _without_encoder_training(step, student, shape, p)
    terms = term_memory(
        agent.distill_plan, student, teacher, shape, p.element, p.element
    )
    assert saved.total == pytest.approx(sum(step.values()) + terms.saved, rel=0.01)
    assert storage_bytes(held['teacher']) == pytest.approx(
        terms.teacher_targets, rel=0.01
    )
    # what the student's capture holds beyond autograd: attention scores and logits
    extra = storage_bytes(held['student'], exclude=set(saved.storages))
    expected = terms.student_scores + logits_bytes(student, shape, p)
    assert extra == pytest.approx(expected, rel=0.01)


def test_topk_cache_term_against_the_formula():
    from anti_scaling.losses import topk_prediction_kl

    torch.manual_seed(0)
    batch, length, vocab, k = 4, 10, 300, 8
    logits = torch.randn(batch, length, vocab, requires_grad=True)
    ids = torch.stack([torch.randperm(vocab)[:k] for _ in range(batch * length)])
    logprobs = torch.log_softmax(torch.randn(batch, length, k), -1) - 0.1
    rest = 1 - logprobs.exp().sum(-1)
    mask = torch.ones(batch, length, dtype=torch.bool)
    with SavedTensors() as saved:
        topk_prediction_kl(logits, ids.view(batch, length, k), logprobs, rest, mask)
    expected = topk_memory(StepBatch(batch, 1, length), vocab, k)
    assert saved.total == pytest.approx(expected.saved, rel=0.01)


def _measure_in_fresh_process(*args: str) -> dict:
    """Run ``tests/memory_support.py ARGS`` with every tensor in its own mapping."""
    env = {
        **os.environ,
        'MALLOC_MMAP_THRESHOLD_': '65536',
        'OMP_NUM_THREADS': '1',
        'PYTHONPATH': os.pathsep.join([TESTS_DIR, os.environ.get('PYTHONPATH', '')]),
    }
    out = subprocess.run(
        [sys.executable, os.path.join(TESTS_DIR, 'memory_support.py'), *args],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize('recipe', ['blender_400Mdistill', 'blender_1Bdistill'])
def test_peak_of_a_training_step_in_a_fresh_process(recipe, tmp_path):
    """Resident memory, on top of weights and optimizer states: the end of the
    forward pass is the peak on this shape (the estimate's largest phase)."""
    figures = _measure_in_fresh_process('peak', str(tmp_path), recipe, '8', '64')
    assert figures['forward'] > figures['backward']
    assert figures['measured'] == pytest.approx(figures['forward'], rel=0.05)


def test_peak_of_the_topk_cache_term_in_a_fresh_process():
    figures = _measure_in_fresh_process('topk', '16', '64', '8000', '32')
    assert figures['measured'] == pytest.approx(figures['estimate'], rel=0.05)


def test_recipe_estimates_add_up():
    safe = estimate('blender_1Bdistill', Setting(mode='safe'))
    lines = {k: v for k, (v, _) in safe.lines.items()}
    p_train = 1_437_393_920 - 2 * 128 * 2560  # sinusoidal positions are frozen
    assert lines['Adam (AMSGrad) states, float32'] == 12 * p_train
    assert lines['fp32 master weights + gradients (safe)'] == 8 * p_train
    assert lines['teacher weights'] == 2 * 2_696_268_800
    # the optimizer step: the foreach Adam's sqrt(v) (4 P) next to the fp16 gradients
    persistent = sum(
        v
        for k, v in lines.items()
        if k.startswith(('teacher', 'student weights', 'Adam', 'fp32'))
    )
    assert safe.phase == 'optimizer step'
    assert safe.peak == persistent + 2 * p_train + 4 * p_train
    cache = estimate('blender_1Bdistill', Setting(mode='mem_efficient'), 'cache')
    assert cache.lines['teacher weights'][0] == 0
    with pytest.raises(DistillationError, match='wide recipe'):
        estimate('blender_400Mdistill', Setting(), 'shared')


def test_memory_estimate_command_prints_both_recipes(capsys):
    from anti_scaling.scripts import memory_estimate

    assert memory_estimate.main(['--batchsize', '16']) == 0
    out = capsys.readouterr().out
    for text in ('blender_400Mdistill', 'blender_1Bdistill', 'peak', 'GiB', '2 P_T'):
        assert text in out


def test_memory_estimate_bad_input_is_one_line_and_status_2(capsys):
    from anti_scaling.scripts import memory_estimate

    assert memory_estimate.main(['--batchsize', '0']) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and '--top-k must be at least 1' in err[0]
