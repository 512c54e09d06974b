"""ParlAI -> CTranslate2: every layout verified against ParlAI, and bad input refused."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys

import pytest
import torch
from hf_support import random_parlai_model, write_gpt2_files

from anti_scaling.errors import DistillationError

pytest.importorskip('ctranslate2')

from anti_scaling.export.ct2.to_ct2 import export_to_ct2  # noqa: E402


@pytest.fixture(scope='module')
def ct2_export(tmp_path_factory, datapath, chitchat_model):
    """The chitchat student in float32, verified on 50 contexts."""
    out = str(tmp_path_factory.mktemp('ct2') / 'f32')
    return export_to_ct2(chitchat_model, out, datapath, verify=True)


def _read(folder: str, name: str) -> dict:
    with open(os.path.join(folder, name), encoding='utf-8') as fh:
        return json.load(fh)


def test_chitchat_student_is_verified(ct2_export):
    """50 contexts: ParlAI's ids, greedy replies and reference log-probs."""
    v = ct2_export.verification
    assert v['examples'] == 50
    assert v['context_ids_equal'] == v['label_ids_equal'] == 50
    assert v['greedy_identical'] == v['greedy_texts_equal'] == 50
    assert v['max_abs_log_prob_diff'] <= 1e-3
    assert v['distinct_replies'] >= 5 and v['mean_reply_tokens'] > 2
    # ParlAI's beam search replayed on CTranslate2 (export/ct2/beam.py): the same
    # replies; CTranslate2's own beam search is only measured.
    assert v['beam_identical'] == 50 and v['beam_size'] == 4
    assert 0 <= v['native_beam_identical'] <= 50
    folder = ct2_export.out_dir
    for name in (
        'model.bin',
        'config.json',
        'shared_vocabulary.json',
        'tokenizer.json',
        'parlai_inputs.json',
        'ct2_generation.json',
        'verification.json',
        'README.md',
    ):
        assert os.path.isfile(os.path.join(folder, name)), name
    assert _read(folder, 'verification.json') == v
    generation = _read(folder, 'ct2_generation.json')
    assert generation['max_length'] == 16
    assert generation['block_ngram'] == generation['context_block_ngram'] == 2
    assert _read(folder, 'parlai_inputs.json')['text_truncate'] == 32
    readme = open(os.path.join(folder, 'README.md'), encoding='utf-8').read()
    assert 'greedy replies identical token for token: 50/50' in readme
    assert 'What CTranslate2 does not express exactly' in readme


def test_engine_scores_match_parlai(ct2_export, chitchat_model, datapath):
    """A one-turn text: ParlAI's ids, and CTranslate2's log-probs within 1e-3 of ParlAI's."""
    from anti_scaling.export.ct2.engine import Engine
    from anti_scaling.model_files import load_generator_agent, model_file_opt

    engine = Engine(ct2_export.out_dir)
    agent = load_generator_agent(model_file_opt(chitchat_model, datapath, {}))
    agent.model.eval()
    text = "Hi there!! I'm fine, thanks -- and YOU? " * 3
    context = engine.context_ids(text)
    assert context == agent.dict.txt2vec(text)[-32:]
    label = agent.dict.txt2vec('me too') + [2]
    with torch.no_grad():
        logits = agent.model(torch.tensor([context]), ys=torch.tensor([label]))[0]
    ours = torch.log_softmax(logits[0], -1)[torch.arange(len(label)), label]
    theirs = engine.score_ids([context], [label])[0]
    assert len(theirs) == len(label)
    assert max(abs(a - b) for a, b in zip(ours.tolist(), theirs)) <= 1e-3


def _random(tmp_path, datapath, dict_file, **options):
    return random_parlai_model(
        datapath,
        str(tmp_path / options['variant'] / 'model'),
        embedding_size=32,
        ffn_size=64,
        n_heads=4,
        n_layers=2,
        dict_file=dict_file,
        dict_tokenizer='re',
        dict_lower=True,
        text_truncate=24,
        label_truncate=8,
        **options,
    )


@pytest.mark.parametrize(
    'options',
    [
        # post-LayerNorm with the embedding LayerNorm (decoder: before positions),
        # segments, sinusoids, output scaling, relu
        dict(
            variant='xlm',
            n_segments=2,
            output_scaling=0.5,
            embeddings_scale=True,
            activation='relu',
            learn_positional_embeddings=False,
        ),
        # plain post-LayerNorm (no transformers counterpart), unscaled embeddings
        dict(variant='aiayn', embeddings_scale=False, activation='gelu'),
    ],
    ids=['xlm', 'aiayn'],
)
def test_variants(tmp_path, datapath, chitchat_model, options):
    model_file = _random(tmp_path, datapath, chitchat_model + '.dict', **options)
    result = export_to_ct2(
        model_file,
        str(tmp_path / 'ct2'),
        datapath,
        verify=True,
        verify_options={'examples': 10},
    )
    v = result.verification
    assert result.variant == options['variant']
    assert v['greedy_identical'] == v['context_ids_equal'] == 10
    assert v['beam_identical'] == 10
    assert v['max_abs_log_prob_diff'] <= 1e-3


def test_bart_with_gpt2_dictionary(tmp_path, datapath):
    """bart: offset positions, [end, start] decoding, a gpt2 dictionary."""
    write_gpt2_files(datapath)
    model_file = random_parlai_model(
        datapath,
        str(tmp_path / 'bart' / 'model'),
        model='bart',
        embedding_size=32,
        ffn_size=64,
        n_heads=4,
        n_encoder_layers=2,
        n_decoder_layers=1,
        dict_tokenizer='gpt2',
        n_positions=64,
        text_truncate=40,
        label_truncate=12,
    )
    result = export_to_ct2(
        model_file,
        str(tmp_path / 'ct2'),
        datapath,
        verify=True,
        verify_options={'examples': 10},
    )
    v = result.verification
    assert result.variant == 'bart'
    assert v['greedy_identical'] == v['label_ids_equal'] == v['context_ids_equal'] == 10
    assert v['beam_identical'] == 10
    assert v['max_abs_log_prob_diff'] <= 1e-3


def _sha(path) -> str:
    return hashlib.sha256(open(path, 'rb').read()).hexdigest()


def test_unstripped_student_is_stripped_on_the_fly(tmp_path, datapath, chitchat_model):
    """Projections still inside: exported all the same; the input file is unchanged."""
    student = tmp_path / 'student'
    student.mkdir()
    states = torch.load(chitchat_model, weights_only=False)
    states['model']['distill_projections.enc_hid_0.weight'] = torch.zeros(4, 4)
    torch.save(states, student / 'model')
    opt = json.load(open(chitchat_model + '.opt'))
    opt['model'] = 'anti_scaling.distillation:DistillNarrowTransformerAgent'
    json.dump(opt, open(student / 'model.opt', 'w'))
    shutil.copy(chitchat_model + '.dict', student / 'model.dict')
    before = {p: _sha(student / p) for p in os.listdir(student)}
    result = export_to_ct2(
        str(student / 'model'),
        str(tmp_path / 'ct2'),
        datapath,
        verify=True,
        verify_options={'examples': 5},
    )
    assert result.verification['greedy_identical'] == 5
    assert {p: _sha(student / p) for p in os.listdir(student)} == before


def test_int8_command_line(tmp_path, datapath, chitchat_model, capsys):
    """The script: int8 with --verify prints agreement and token accuracy change."""
    from anti_scaling.scripts import export_ct2

    out = tmp_path / 'int8'
    argv = [chitchat_model, str(out), '-dp', datapath, '--quantization', 'int8']
    code = export_ct2.main([*argv, '--verify', '--verify-examples', '10'])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert 'greedy replies 10/10 identical' in printed
    assert "int8: greedy replies equal float32's on" in printed
    assert 'against float32' in printed
    v = _read(str(out), 'verification.json')
    assert 0 <= v['quantized_greedy_agreement'] <= 1
    assert abs(v['token_accuracy_change']) < 0.2
    config = _read(str(out), 'config.json')
    assert config['eos_token'] == '__end__'
    # An existing folder without --overwrite: one line, exit 2, nothing changed.
    listing = sorted(os.listdir(out))
    assert export_ct2.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith('anti_scaling: error: ') and err.count('\n') == 1
    assert 'exists: pass --overwrite' in err
    assert sorted(os.listdir(out)) == listing


def test_bad_input_writes_nothing(tmp_path, datapath, chitchat_model, monkeypatch):
    """Refusals are one line, before any work, and leave nothing behind."""
    out = str(tmp_path / 'out')
    before = set(os.listdir(tmp_path))
    # A weight type this device cannot run (CUDA types on a CPU).
    with pytest.raises(DistillationError, match='float16 cannot run on cpu') as e:
        export_to_ct2(chitchat_model, out, datapath, quantization='float16')
    assert '\n' not in str(e.value)
    spaced = tmp_path / 'spaced'
    shutil.copytree(os.path.dirname(chitchat_model), spaced)
    opt = json.load(open(spaced / 'model.opt'))
    opt['dict_tokenizer'] = 'bpe'
    json.dump(opt, open(spaced / 'model.opt', 'w'))
    before = set(os.listdir(tmp_path))
    with pytest.raises(DistillationError, match='--dict-tokenizer bpe cannot be'):
        export_to_ct2(str(spaced / 'model'), out, datapath)
    assert set(os.listdir(tmp_path)) == before
    # A missing package names the extra.
    monkeypatch.setitem(sys.modules, 'ctranslate2', None)
    with pytest.raises(DistillationError, match=r"\.\[serve\]"):
        export_to_ct2(chitchat_model, out, datapath)
    assert set(os.listdir(tmp_path)) == before
