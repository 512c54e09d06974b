"""fairseq BART checkpoints -> ParlAI ``bart`` teachers (anti_scaling.fairseq_bart).

Everything but the last test runs without fairseq, on checkpoints built by hand
with fairseq's parameter names and argument layout. The last test (slow, skipped
without the ``fairseq`` extra) trains a tiny BART with fairseq's command-line
tools, converts it, compares logits and distils it with both BART agents.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import random
import subprocess
import sys
import types
from collections import OrderedDict

import pytest
import torch
from helpers import make_agent, train, train_reports

from anti_scaling import fairseq_bart
from anti_scaling.errors import DistillationError
from anti_scaling.fairseq_bart import (
    INSTALL_HINT,
    build_parlai_bart,
    check_architecture,
    fairseq_model_config,
    parlai_key,
    read_fairseq_dict,
    require_fairseq,
)
from anti_scaling.scripts.convert_fairseq_bart import main as convert_main

WORDS = ['cat', 'dog', 'bird', 'sees', 'likes', 'red', 'blue', 'madeupword0000']


# hand-built fairseq checkpoints ---------------------------------------------------


def fake_args(**overrides) -> argparse.Namespace:
    """fairseq 0.12's legacy arguments of a tiny bart_base (2+1 layers, width 8)."""
    args = dict(
        _name='bart_base',
        arch='bart_base',
        encoder_layers=2,
        decoder_layers=1,
        encoder_embed_dim=8,
        decoder_embed_dim=8,
        decoder_input_dim=8,
        decoder_output_dim=8,
        encoder_ffn_embed_dim=16,
        decoder_ffn_embed_dim=16,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_normalize_before=False,
        decoder_normalize_before=False,
        encoder_learned_pos=True,
        decoder_learned_pos=True,
        no_token_positional_embeddings=False,
        layernorm_embedding=True,
        no_scale_embedding=True,
        activation_fn='gelu',
        share_all_embeddings=True,
        share_decoder_input_output_embed=True,
        adaptive_softmax_cutoff=None,
        adaptive_input=False,
        cross_self_attention=False,
        no_cross_attention=False,
        max_source_positions=10,
        max_target_positions=10,
        dropout=0.1,
        attention_dropout=0.0,
        activation_dropout=0.0,
        relu_dropout=0.0,
    )
    args.update(overrides)
    return argparse.Namespace(**args)


def fake_state_dict(args: argparse.Namespace, n_words: int, seed: int = 0) -> dict:
    """Random tensors under fairseq BART's parameter names and shapes."""
    gen = torch.Generator().manual_seed(seed)
    d, f = args.encoder_embed_dim, args.encoder_ffn_embed_dim

    def rand(*shape):
        return torch.randn(*shape, generator=gen)

    sd = OrderedDict()
    embed = rand(4 + n_words, d)
    for stack in ('encoder', 'decoder'):
        sd[f'{stack}.version'] = torch.tensor([3.0])
        sd[f'{stack}.embed_tokens.weight'] = embed
        sd[f'{stack}.embed_positions.weight'] = rand(args.max_source_positions + 2, d)
        sd[f'{stack}.layernorm_embedding.weight'] = rand(d)
        sd[f'{stack}.layernorm_embedding.bias'] = rand(d)
        attentions = (
            ('self_attn',) if stack == 'encoder' else ('self_attn', 'encoder_attn')
        )
        for i in range(getattr(args, f'{stack}_layers')):
            prefix = f'{stack}.layers.{i}.'
            for attn in attentions:
                for proj in ('k_proj', 'v_proj', 'q_proj', 'out_proj'):
                    sd[f'{prefix}{attn}.{proj}.weight'] = rand(d, d)
                    sd[f'{prefix}{attn}.{proj}.bias'] = rand(d)
                sd[f'{prefix}{attn}_layer_norm.weight'] = rand(d)
                sd[f'{prefix}{attn}_layer_norm.bias'] = rand(d)
            sd[f'{prefix}fc1.weight'] = rand(f, d)
            sd[f'{prefix}fc1.bias'] = rand(f)
            sd[f'{prefix}fc2.weight'] = rand(d, f)
            sd[f'{prefix}fc2.bias'] = rand(d)
            sd[f'{prefix}final_layer_norm.weight'] = rand(d)
            sd[f'{prefix}final_layer_norm.bias'] = rand(d)
    sd['decoder.output_projection.weight'] = embed
    return sd


def fake_state(**overrides) -> dict:
    """A fairseq 0.12 checkpoint dict: cfg with Namespace model args, and weights."""
    args = fake_args(**overrides)
    return {
        'args': None,
        'cfg': {'model': args, 'task': {'_name': 'translation'}},
        'model': fake_state_dict(args, len(WORDS)),
        'extra_state': {'epoch': 3, 'val_loss': 1.5},
    }


def write_dict_txt(path, words=WORDS) -> str:
    with open(path, 'w', encoding='utf-8') as fh:
        for i, word in enumerate(words):
            fh.write(f'{word} {100 - i}\n')
    return str(path)


@pytest.fixture
def fake_files(tmp_path):
    """(checkpoint, dict.txt, output model path) for a convertible fake BART."""
    checkpoint = tmp_path / 'checkpoint_best.pt'
    torch.save(fake_state(), checkpoint)
    dict_txt = write_dict_txt(tmp_path / 'dict.txt')
    return str(checkpoint), dict_txt, str(tmp_path / 'parlai' / 'model')


def run_cli(capsys, *args) -> tuple[int, str, str]:
    status = convert_main([str(a) for a in args])
    out, err = capsys.readouterr()
    return status, out, err


def assert_one_line_error(err: str, *needles: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith('anti_scaling:')]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def assert_nothing_written(output: str) -> None:
    directory = os.path.dirname(output)
    leftovers = os.listdir(directory) if os.path.isdir(directory) else []
    assert leftovers == [], f'left behind: {leftovers}'


# key mapping (pure) -------------------------------------------------------------


@pytest.mark.parametrize(
    'fairseq_name, parlai_name',
    [
        (
            'encoder.layers.0.self_attn.q_proj.weight',
            'encoder.layers.0.attention.q_lin.weight',
        ),
        (
            'encoder.layers.3.self_attn.out_proj.bias',
            'encoder.layers.3.attention.out_lin.bias',
        ),
        (
            'encoder.layers.1.self_attn_layer_norm.weight',
            'encoder.layers.1.norm1.weight',
        ),
        ('encoder.layers.1.fc1.weight', 'encoder.layers.1.ffn.lin1.weight'),
        ('encoder.layers.1.fc2.bias', 'encoder.layers.1.ffn.lin2.bias'),
        ('encoder.layers.1.final_layer_norm.bias', 'encoder.layers.1.norm2.bias'),
        (
            'decoder.layers.0.self_attn.k_proj.weight',
            'decoder.layers.0.self_attention.k_lin.weight',
        ),
        ('decoder.layers.0.self_attn_layer_norm.bias', 'decoder.layers.0.norm1.bias'),
        (
            'decoder.layers.2.encoder_attn.v_proj.bias',
            'decoder.layers.2.encoder_attention.v_lin.bias',
        ),
        (
            'decoder.layers.2.encoder_attn_layer_norm.weight',
            'decoder.layers.2.norm2.weight',
        ),
        ('decoder.layers.2.final_layer_norm.weight', 'decoder.layers.2.norm3.weight'),
        ('decoder.layernorm_embedding.bias', 'decoder.norm_embeddings.bias'),
        ('encoder.layers.0.encoder_attn.q_proj.weight', None),
        ('encoder.layers.0.self_attn.c_attn', None),
        ('decoder.project_out_dim.weight', None),
    ],
)
def test_parlai_key(fairseq_name, parlai_name):
    assert parlai_key(fairseq_name) == parlai_name


def test_weights_land_on_parlai_names():
    state = fake_state()
    sd = state['model']
    converted = build_parlai_bart(state, [(w, 1) for w in WORDS])
    got = converted.model.state_dict()
    embed = sd['encoder.embed_tokens.weight']
    # ParlAI ids: __null__ = fairseq <pad> (1), __start__ = fairseq <s> (0), rest equal
    for name in (
        'embeddings.weight',
        'encoder.embeddings.weight',
        'decoder.embeddings.weight',
    ):
        assert torch.equal(got[name][0], embed[1])
        assert torch.equal(got[name][1], embed[0])
        assert torch.equal(got[name][2:], embed[2:])
    for stack in ('encoder', 'decoder'):
        positions = sd[f'{stack}.embed_positions.weight']
        assert torch.equal(got[f'{stack}.position_embeddings.weight'], positions[2:])
        assert torch.equal(
            got[f'{stack}.norm_embeddings.weight'],
            sd[f'{stack}.layernorm_embedding.weight'],
        )
    assert torch.equal(
        got['encoder.layers.1.attention.v_lin.weight'],
        sd['encoder.layers.1.self_attn.v_proj.weight'],
    )
    assert torch.equal(
        got['decoder.layers.0.encoder_attention.out_lin.bias'],
        sd['decoder.layers.0.encoder_attn.out_proj.bias'],
    )
    assert torch.equal(
        got['decoder.layers.0.norm3.weight'],
        sd['decoder.layers.0.final_layer_norm.weight'],
    )
    opt = converted.opt
    assert opt['model'] == 'bart'
    assert (opt['n_encoder_layers'], opt['n_decoder_layers']) == (2, 1)
    assert (opt['embedding_size'], opt['ffn_size'], opt['n_heads']) == (8, 16, 2)
    assert opt['variant'] == 'bart' and opt['activation'] == 'gelu'
    assert opt['n_positions'] == 10 and opt['label_truncate'] == 9
    assert opt['embeddings_scale'] is False and opt['learn_positional_embeddings']
    assert opt['force_fp16_tokens'] is False and opt['dict_tokenizer'] == 'space'
    assert not {'datapath', 'datatype', 'model_file', 'dict_file', 'override'} & set(
        opt
    )


def test_combined_in_proj_weights_are_split():
    state = fake_state()
    sd = state['model']
    expected = build_parlai_bart(state, [(w, 1) for w in WORDS]).model.state_dict()
    for key in [
        k for k in sd if k.endswith('q_proj.weight') or k.endswith('q_proj.bias')
    ]:
        base, kind = key.rsplit('.q_proj.', 1)
        parts = [sd.pop(f'{base}.{p}_proj.{kind}') for p in ('q', 'k', 'v')]
        sd[f'{base}.in_proj_{kind}'] = torch.cat(parts, 0)
    got = build_parlai_bart(state, [(w, 1) for w in WORDS]).model.state_dict()
    for key, value in expected.items():
        assert torch.equal(got[key], value), key


def test_older_checkpoint_with_args_only():
    state = fake_state()
    state['args'] = state.pop('cfg')['model']
    config = fairseq_model_config(state)
    assert config['encoder_layers'] == 2
    assert check_architecture(config, state['model']).n_encoder_layers == 2


def test_denoising_mask_token_is_kept():
    state = fake_state()
    state['cfg']['task'] = {'_name': 'denoising'}
    embed = torch.cat([state['model']['encoder.embed_tokens.weight'], torch.ones(1, 8)])
    for key in (
        'encoder.embed_tokens.weight',
        'decoder.embed_tokens.weight',
        'decoder.output_projection.weight',
    ):
        state['model'][key] = embed
    converted = build_parlai_bart(state, [(w, 1) for w in WORDS])
    assert converted.tokens[-1][0] == '<mask>'
    assert converted.model.embeddings.weight.shape[0] == 4 + len(WORDS) + 1


def test_read_fairseq_dict(tmp_path):
    path = tmp_path / 'dict.txt'
    path.write_text('hello 5\nworld 3 #fairseq:overwrite\nmadeupword0000 0\n')
    assert read_fairseq_dict(str(path)) == [
        ('hello', 5),
        ('world', 3),
        ('madeupword0000', 0),
    ]
    path.write_text('hello 5\nno-count-here\n')
    with pytest.raises(DistillationError, match=r'dict.txt:2 is not a fairseq'):
        read_fairseq_dict(str(path))
    path.write_text('hello 5\nhello 2\n')
    with pytest.raises(DistillationError, match='appears twice'):
        read_fairseq_dict(str(path))


# the command line: good and bad input ---------------------------------------------


def test_cli_converts_to_a_teacher(fake_files, capsys, datapath):
    from parlai.agents.bart.bart import BartAgent

    from anti_scaling.agents.teacher import load_teacher

    checkpoint, dict_txt, output = fake_files
    status, out, err = run_cli(
        capsys, checkpoint, '--dict', dict_txt, '--output', output
    )
    assert status == 0, err
    assert f'--teacher-model {output}' in out
    assert sorted(os.listdir(os.path.dirname(output))) == [
        'model',
        'model.dict',
        'model.opt',
    ]
    with open(output + '.opt') as fh:
        assert json.load(fh)['model'] == 'bart'
    teacher = load_teacher(output, datapath=datapath, expected=BartAgent)
    assert teacher.n_encoder_layers == 2 and teacher.n_decoder_layers == 1
    # ids line up: dict.txt line i is ParlAI id 4 + i, as it is fairseq id 4 + i
    for i, word in enumerate(WORDS):
        assert teacher.dict.tok2ind[word] == 4 + i
    embed = torch.load(checkpoint, weights_only=False)['model'][
        'encoder.embed_tokens.weight'
    ]
    assert torch.equal(teacher.model.embeddings.weight[4:], embed[4:])
    assert teacher.dict.txt2vec('cat bird') == [4, 6]


def test_existing_output_needs_force(fake_files, capsys):
    checkpoint, dict_txt, output = fake_files
    assert run_cli(capsys, checkpoint, '--dict', dict_txt, '-o', output)[0] == 0
    status, _, err = run_cli(capsys, checkpoint, '--dict', dict_txt, '-o', output)
    assert status == 2
    assert_one_line_error(err, 'already exists', '--force')
    status, _, err = run_cli(
        capsys, checkpoint, '--dict', dict_txt, '-o', output, '--force'
    )
    assert status == 0, err


def _arch_variants():
    yield 'transformer_lm', {'_name': 'transformer_lm', 'arch': 'transformer_lm'}, (
        "'transformer_lm' is not supported: it is not a BART model"
    )
    yield 'mbart', {'arch': 'mbart_large', 'encoder_normalize_before': True}, (
        'pre-LayerNorm'
    )
    yield 'sinusoidal', {'encoder_learned_pos': False}, 'learned position'
    yield 'activation', {'activation_fn': 'tanh'}, "activation 'tanh'"
    yield 'asymmetric', {'decoder_attention_heads': 4}, 'decoder_attention_heads'


@pytest.mark.parametrize(
    'overrides, message',
    [(o, m) for _, o, m in _arch_variants()],
    ids=[name for name, _, _ in _arch_variants()],
)
def test_unsupported_architecture_is_refused(tmp_path, capsys, overrides, message):
    state = fake_state()
    vars(state['cfg']['model']).update(overrides)
    checkpoint = tmp_path / 'checkpoint.pt'
    torch.save(state, checkpoint)
    output = str(tmp_path / 'out' / 'model')
    dict_txt = write_dict_txt(tmp_path / 'dict.txt')
    status, _, err = run_cli(capsys, checkpoint, '--dict', dict_txt, '--output', output)
    assert status == 2
    line = assert_one_line_error(err, 'is not supported', message)
    assert 'only BART encoder-decoders' in line
    assert_nothing_written(output)


def test_unknown_parameter_is_refused(tmp_path, capsys):
    state = fake_state()
    state['model']['encoder.layer_norm.weight'] = torch.ones(8)  # pre-LN final norm
    checkpoint = tmp_path / 'checkpoint.pt'
    torch.save(state, checkpoint)
    output = str(tmp_path / 'out' / 'model')
    dict_txt = write_dict_txt(tmp_path / 'dict.txt')
    status, _, err = run_cli(capsys, checkpoint, '--dict', dict_txt, '--output', output)
    assert status == 2
    assert_one_line_error(err, 'unexpected parameter encoder.layer_norm.weight')
    assert_nothing_written(output)


def test_refusal_keeps_an_existing_model(fake_files, tmp_path, capsys):
    checkpoint, dict_txt, output = fake_files
    assert run_cli(capsys, checkpoint, '--dict', dict_txt, '-o', output)[0] == 0
    before = {
        name: open(os.path.join(os.path.dirname(output), name), 'rb').read()
        for name in os.listdir(os.path.dirname(output))
    }
    state = fake_state(arch='transformer', _name='transformer')
    bad = tmp_path / 'bad.pt'
    torch.save(state, bad)
    status, _, err = run_cli(capsys, bad, '--dict', dict_txt, '-o', output, '--force')
    assert status == 2
    assert_one_line_error(err, 'is not supported')
    after = {
        name: open(os.path.join(os.path.dirname(output), name), 'rb').read()
        for name in os.listdir(os.path.dirname(output))
    }
    assert after == before


@pytest.mark.parametrize(
    'content, message',
    [
        (None, 'fairseq checkpoint not found'),
        (b'not a checkpoint at all', 'is not a readable torch checkpoint'),
        ({'weights': [1, 2]}, 'is not a fairseq checkpoint'),
    ],
    ids=['missing', 'garbage', 'not-fairseq'],
)
def test_missing_or_corrupt_checkpoint(tmp_path, capsys, content, message):
    checkpoint = tmp_path / 'checkpoint.pt'
    if isinstance(content, bytes):
        checkpoint.write_bytes(content)
    elif content is not None:
        torch.save(content, checkpoint)
    output = str(tmp_path / 'out' / 'model')
    dict_txt = write_dict_txt(tmp_path / 'dict.txt')
    status, _, err = run_cli(capsys, checkpoint, '--dict', dict_txt, '--output', output)
    assert status == 2
    assert_one_line_error(err, message)
    assert_nothing_written(output)


def test_truncated_checkpoint(fake_files, capsys):
    checkpoint, dict_txt, output = fake_files
    data = open(checkpoint, 'rb').read()
    with open(checkpoint, 'wb') as fh:
        fh.write(data[: len(data) // 2])
    status, _, err = run_cli(capsys, checkpoint, '--dict', dict_txt, '--output', output)
    assert status == 2
    assert_one_line_error(err, 'is not a readable torch checkpoint')
    assert_nothing_written(output)


def test_dictionary_must_match(fake_files, tmp_path, capsys):
    checkpoint, _, output = fake_files
    short = write_dict_txt(tmp_path / 'short.txt', WORDS[:-1])
    status, _, err = run_cli(capsys, checkpoint, '--dict', short, '--output', output)
    assert status == 2
    assert_one_line_error(err, '12 embedding rows', 'give --dict the dict.txt')
    clash = write_dict_txt(tmp_path / 'clash.txt', ['__null__'] + WORDS[1:])
    status, _, err = run_cli(capsys, checkpoint, '--dict', clash, '--output', output)
    assert status == 2
    assert_one_line_error(err, "'__null__' cannot keep id 4")
    status, _, err = run_cli(
        capsys, checkpoint, '--dict', tmp_path / 'nope.txt', '--output', output
    )
    assert status == 2
    assert_one_line_error(err, 'fairseq dictionary not found')
    assert_nothing_written(output)


# untrusted pickles and the fairseq extra -----------------------------------------


def _touch(path):
    """Runs only if an unpickler executes code from the checkpoint."""
    with open(path, 'w') as fh:
        fh.write('code from the checkpoint ran')
    return path


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (_touch, (self.marker,))


def test_untrusted_pickle_is_refused_unless_trusted(tmp_path, capsys):
    marker = tmp_path / 'marker'
    state = fake_state()
    state['extra_state']['payload'] = _Payload(str(marker))
    checkpoint = tmp_path / 'checkpoint.pt'
    torch.save(state, checkpoint)
    dict_txt = write_dict_txt(tmp_path / 'dict.txt')
    output = str(tmp_path / 'out' / 'model')
    status, _, err = run_cli(capsys, checkpoint, '--dict', dict_txt, '--output', output)
    assert status == 2
    assert_one_line_error(
        err, 'outside the safe set', 'test_fairseq_bart._touch', '--trust-checkpoint'
    )
    assert not marker.exists(), 'the safe loader ran code from the checkpoint'
    assert_nothing_written(output)
    # the user's explicit choice: the file is unpickled fully
    status, _, err = run_cli(
        capsys, checkpoint, '--dict', dict_txt, '--output', output, '--trust-checkpoint'
    )
    assert status == 0, err
    assert marker.exists()


def test_legacy_format_pickle_is_refused(tmp_path, capsys):
    marker = tmp_path / 'marker'
    state = fake_state()
    state['extra_state']['payload'] = _Payload(str(marker))
    checkpoint = tmp_path / 'checkpoint.pt'
    torch.save(state, checkpoint, _use_new_zipfile_serialization=False)
    dict_txt = write_dict_txt(tmp_path / 'dict.txt')
    output = str(tmp_path / 'out' / 'model')
    status, _, err = run_cli(capsys, checkpoint, '--dict', dict_txt, '--output', output)
    assert status == 2
    assert_one_line_error(err, 'test_fairseq_bart._touch', '--trust-checkpoint')
    assert not marker.exists()
    assert_nothing_written(output)


def test_omegaconf_config_needs_trust(tmp_path, capsys):
    omegaconf = pytest.importorskip('omegaconf')  # comes with the fairseq extra
    state = fake_state()
    model_args = vars(state['cfg']['model'])
    state['cfg'] = omegaconf.OmegaConf.create(
        {'model': model_args, 'task': {'_name': 'translation'}}
    )
    checkpoint = tmp_path / 'checkpoint.pt'
    torch.save(state, checkpoint)
    dict_txt = write_dict_txt(tmp_path / 'dict.txt')
    output = str(tmp_path / 'out' / 'model')
    status, _, err = run_cli(capsys, checkpoint, '--dict', dict_txt, '--output', output)
    assert status == 2
    assert_one_line_error(err, 'omegaconf.', '--trust-checkpoint')
    assert_nothing_written(output)
    status, _, err = run_cli(
        capsys, checkpoint, '--dict', dict_txt, '--output', output, '--trust-checkpoint'
    )
    assert status == 0, err


def _block_fairseq(monkeypatch):
    for name in [m for m in sys.modules if m == 'fairseq' or m.startswith('fairseq.')]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, 'fairseq', None)  # import fairseq -> ImportError


def test_missing_extra_is_named(monkeypatch, fake_files, capsys):
    _block_fairseq(monkeypatch)
    with pytest.raises(DistillationError) as info:
        require_fairseq('--verify')
    assert str(info.value) == (
        f'--verify needs fairseq, which is not installed: {INSTALL_HINT}'
    )
    checkpoint, dict_txt, output = fake_files
    status, _, err = run_cli(
        capsys, checkpoint, '--dict', dict_txt, '--output', output, '--verify'
    )
    assert status == 2
    assert_one_line_error(err, "pip install 'anti-scaling[fairseq]'")
    assert_nothing_written(output)


def test_trusted_checkpoint_needing_fairseq_names_the_extra(
    monkeypatch, tmp_path, capsys
):
    # a checkpoint holding a fairseq object (as some fairseq versions write them)
    package = types.ModuleType('fairseq')
    meters = types.ModuleType('fairseq.meters')

    class AverageMeter:
        pass

    AverageMeter.__module__ = 'fairseq.meters'
    AverageMeter.__qualname__ = 'AverageMeter'
    meters.AverageMeter = AverageMeter
    package.meters = meters
    monkeypatch.setitem(sys.modules, 'fairseq', package)
    monkeypatch.setitem(sys.modules, 'fairseq.meters', meters)
    state = fake_state()
    state['extra_state']['meter'] = AverageMeter()
    checkpoint = tmp_path / 'checkpoint.pt'
    torch.save(state, checkpoint)
    monkeypatch.delitem(sys.modules, 'fairseq.meters')
    _block_fairseq(monkeypatch)

    dict_txt = write_dict_txt(tmp_path / 'dict.txt')
    output = str(tmp_path / 'out' / 'model')
    status, _, err = run_cli(capsys, checkpoint, '--dict', dict_txt, '--output', output)
    assert status == 2
    assert_one_line_error(err, 'fairseq.meters.AverageMeter', '--trust-checkpoint')
    status, _, err = run_cli(
        capsys, checkpoint, '--dict', dict_txt, '--output', output, '--trust-checkpoint'
    )
    assert status == 2
    assert_one_line_error(err, 'fairseq is not installed', INSTALL_HINT)
    assert_nothing_written(output)


# same logits as fairseq's own model (needs the fairseq extra) -----------------------


def _fairseq_importable() -> bool:
    if importlib.util.find_spec('fairseq') is None:
        return False
    try:
        require_fairseq('this test')
    except DistillationError:
        return False
    return True


needs_fairseq = pytest.mark.skipif(
    not _fairseq_importable(), reason=f'needs {INSTALL_HINT}'
)


@needs_fairseq
@pytest.mark.parametrize(
    'overrides',
    [
        {},
        {'layernorm_embedding': False},
        {'activation_fn': 'relu', 'no_scale_embedding': False},
    ],
    ids=['bart', 'no-embedding-layernorm', 'relu-scaled-embeddings'],
)
def test_fake_checkpoint_matches_fairseq(tmp_path, overrides):
    state = fake_state(**overrides)
    if not state['cfg']['model'].layernorm_embedding:
        for key in [k for k in state['model'] if 'layernorm_embedding' in k]:
            del state['model'][key]
    dict_txt = write_dict_txt(tmp_path / 'dict.txt')
    converted = build_parlai_bart(state, read_fairseq_dict(dict_txt))
    assert converted.opt['variant'] == (
        'bart' if state['cfg']['model'].layernorm_embedding else 'aiayn'
    )
    fairseq_model = fairseq_bart.build_fairseq_model(state, dict_txt)
    diff = fairseq_bart.logits_max_abs_diff(
        fairseq_model, converted.model, n_sequences=16, max_length=8
    )
    assert diff < 1e-4


# end to end with fairseq's own tools (slow; needs the fairseq extra) ----------------


VOCAB = (
    'the a cat dog bird sees likes finds runs sleeps red blue green small big old '
    'new house tree river and with near under over today now slowly fast happy '
    'quiet loud cold warm'
).split()


def _write_reverse_task(directory, n_train=400, n_valid=50, seed=0):
    """Sentences and their word-reversal: fairseq text files and a ParlAI task file.

    fairseq lines start with ``<s>`` so that fairseq trains on the exact format
    ParlAI's bart agent feeds (``<s> x </s>``, decoder ``</s> <s> y``).
    """
    rng = random.Random(seed)
    examples = {}
    for split, n in (('train', n_train), ('valid', n_valid)):
        pairs = []
        for _ in range(n):
            words = [rng.choice(VOCAB) for _ in range(rng.randint(3, 8))]
            pairs.append((' '.join(words), ' '.join(reversed(words))))
        with (
            open(os.path.join(directory, f'{split}.src'), 'w') as src,
            open(os.path.join(directory, f'{split}.tgt'), 'w') as tgt,
        ):
            for text, label in pairs:
                src.write(f'<s> {text}\n')
                tgt.write(f'<s> {label}\n')
        with open(os.path.join(directory, f'{split}.parlai'), 'w') as fh:
            for text, label in pairs:
                fh.write(f'text:{text}\tlabels:{label}\tepisode_done:True\n')
        examples[split] = pairs
    return examples


def _run(args, cwd):
    env = dict(os.environ, TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD='1', OMP_NUM_THREADS='1')
    done = subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout + done.stderr


@pytest.mark.slow
@needs_fairseq
def test_fairseq_bart_end_to_end(tmp_path, datapath, capsys):
    from fairseq.data import Dictionary
    from parlai.core.message import Message
    from parlai.scripts.eval_model import EvalModel

    work = tmp_path / 'fairseq'
    work.mkdir()
    examples = _write_reverse_task(str(work))
    # 1. fairseq's own tools: binarize with a local vocabulary, train a tiny BART
    # fmt: off
    _run(
        [
            '-m', 'fairseq_cli.preprocess', '--source-lang', 'src',
            '--target-lang', 'tgt', '--trainpref', 'train', '--validpref', 'valid',
            '--destdir', 'bin', '--joined-dictionary', '--workers', '1',
        ],
        work,
    )
    log = _run(
        [
            '-m', 'fairseq_cli.train', 'bin', '--task', 'translation',
            '--source-lang', 'src', '--target-lang', 'tgt', '--arch', 'bart_base',
            '--encoder-layers', '2', '--decoder-layers', '2',
            '--encoder-embed-dim', '32', '--decoder-embed-dim', '32',
            '--encoder-ffn-embed-dim', '64', '--decoder-ffn-embed-dim', '64',
            '--encoder-attention-heads', '4', '--decoder-attention-heads', '4',
            '--max-source-positions', '64', '--max-target-positions', '64',
            '--dropout', '0.1', '--optimizer', 'adam', '--lr', '0.005',
            '--lr-scheduler', 'inverse_sqrt', '--warmup-updates', '50',
            '--criterion', 'cross_entropy', '--max-tokens', '400',
            '--max-epoch', '40', '--cpu', '--num-workers', '0',
            '--save-dir', 'ckpt', '--no-epoch-checkpoints', '--no-last-checkpoints',
            '--seed', '1', '--log-format', 'simple',
        ],
        work,
    )
    # fmt: on
    best = [line for line in log.splitlines() if "valid on 'valid'" in line][-1]
    print('\nfairseq:', best.split('|', 3)[-1].strip())
    checkpoint = str(work / 'ckpt' / 'checkpoint_best.pt')
    dict_txt = str(work / 'bin' / 'dict.src.txt')

    # 2. convert (with the built-in check against fairseq), offline
    teacher = str(tmp_path / 'teacher' / 'model')
    status = convert_main(
        [checkpoint, '--dict', dict_txt, '--output', teacher, '--verify']
    )
    out = capsys.readouterr().out
    assert status == 0
    print(out.strip())

    # 3a. same logits on the same padded batches of random tokens
    state = fairseq_bart.load_fairseq_checkpoint(checkpoint)
    fairseq_model = fairseq_bart.build_fairseq_model(state, dict_txt)
    agent = make_agent(['-mf', teacher, '--datatype', 'valid'], datapath)
    assert type(agent).__name__ == 'BartAgent'
    agent.model.eval()
    random_diff = fairseq_bart.logits_max_abs_diff(
        fairseq_model, agent.model, n_sequences=32, max_length=20, seed=1
    )
    # 3b. same logits on the validation text, through each side's own pipeline
    fs_dict = Dictionary.load(dict_txt)
    order = fairseq_bart.parlai_order(len(fs_dict))
    text_diff = 0.0
    with torch.no_grad():
        for text, label in examples['valid'][:24]:
            src = fs_dict.encode_line(f'<s> {text}', add_if_not_exist=False).long()
            tgt = fs_dict.encode_line(f'<s> {label}', add_if_not_exist=False).long()
            prev = torch.cat([tgt[-1:], tgt[:-1]])  # </s> <s> y
            fs_logits = fairseq_model(src[None], torch.tensor([len(src)]), prev[None])[
                0
            ]
            agent.reset()
            obs = agent.observe(
                Message({'text': text, 'labels': [label], 'episode_done': True})
            )
            batch = agent.batchify([obs])
            assert batch.text_vec[0].tolist() == order[src].tolist()
            scores = agent.model(*agent._model_input(batch), ys=batch.label_vec)[0]
            parlai_logits = scores[:, :, order]
            diff = (fs_logits[:, 1:] - parlai_logits).abs().max().item()
            text_diff = max(text_diff, diff)
    print(
        f'logits max |fairseq - ParlAI|: random batches {random_diff:.3g}, '
        f'validation text {text_diff:.3g}'
    )
    assert random_diff < 1e-4 and text_diff < 1e-4

    # 4. distil the converted teacher with both BART agents
    task = dict(
        task='fromfile:parlaiformat', fromfile_datapath=str(work / 'train.parlai')
    )
    runs = {
        'DistillBartAgent': dict(
            max_train_steps=100,
            n_encoder_layers=1,
            n_decoder_layers=1,
            pred_loss_coeff=1.0,
            hidden_loss_coeff=1.0,
            encoder_loss_coeff=1.0,
        ),
        'DistillNarrowBartAgent': dict(  # from scratch: needs more steps
            max_train_steps=400,
            n_encoder_layers=1,
            n_decoder_layers=1,
            embedding_size=16,
            ffn_size=32,
            embedding_loss_coeff=1.0,
            hidden_loss_coeff=1.0,
            self_attn_loss_coeff=1.0,
            enc_dec_attn_loss_coeff=1.0,
            pred_loss_coeff=1.0,
        ),
    }
    heldout = dict(
        task='fromfile:parlaiformat',
        fromfile_datapath=str(work / 'valid.parlai'),
        datapath=datapath,
        datatype='valid',
        batchsize=16,
        skip_generation=True,
    )
    teacher_valid = EvalModel.main(model_file=teacher, **heldout)
    print('teacher (held out)', json.dumps(_report(teacher_valid), sort_keys=True))
    for name, options in runs.items():
        valid, _ = train(
            datapath,
            model=f'anti_scaling.distillation:{name}',
            teacher_model=teacher,
            model_file=str(tmp_path / name / 'model'),
            batchsize=16,
            learningrate=3e-3,
            **task,
            **options,
        )
        report = _report(valid)
        print(name, json.dumps(report, sort_keys=True))
        for key in ('distill_loss', 'pred_loss', 'teacher_acc', 'token_acc'):
            assert math.isfinite(report[key]), key
        reports = train_reports(str(tmp_path / name / 'model'))
        first, last = reports[0]['distill_loss'], reports[-1]['distill_loss']
        print(f'{name}: train distill_loss {first:.4g} -> {last:.4g}')
        assert last < first
        # the wide student starts from the teacher's layers, the narrow from scratch
        assert report['teacher_acc'] > (0.5 if name == 'DistillBartAgent' else 0.3)
        with open(tmp_path / name / 'model.opt') as fh:
            opt = json.load(fh)
        assert opt['dict_tokenizer'] == 'space' and opt['n_positions'] == 64
        student_valid = EvalModel.main(
            model_file=str(tmp_path / name / 'model'), **heldout
        )
        print(name, '(held out)', json.dumps(_report(student_valid), sort_keys=True))


def _report(metrics) -> dict[str, float]:
    return {k: round(float(v), 4) for k, v in metrics.items() if k in _REPORTED}


_REPORTED = {
    'loss',
    'token_acc',
    'distill_loss',
    'pred_loss',
    'teacher_acc',
    'enc_loss',
    'enc_hid_loss',
    'dec_hid_loss',
    'enc_emb_loss',
    'dec_emb_loss',
    'enc_self_attn_loss',
    'dec_self_attn_loss',
    'enc_dec_attn_loss',
}
