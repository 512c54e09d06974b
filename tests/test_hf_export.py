"""ParlAI -> Hugging Face transformers: the three families, verified against ParlAI."""

from __future__ import annotations

import json
import math
import os
import shutil

import pytest
import torch
from hf_support import random_parlai_model, write_gpt2_files

from anti_scaling.errors import DistillationError
from anti_scaling.export.hf.to_hf import export_to_hf, load_for_export
from anti_scaling.export.hf.verify import load_helper

transformers = pytest.importorskip('transformers')


def _read(folder: str, name: str) -> dict:
    with open(os.path.join(folder, name)) as fh:
        return json.load(fh)


def test_chitchat_student_export_is_verified(chitchat_export, chitchat_model):
    """50 chitchat contexts: same ids, logits within 1e-4, same greedy replies."""
    v = chitchat_export.verification
    assert v['examples'] == 50
    assert v['context_ids_equal'] == v['label_ids_equal'] == 50
    assert v['max_abs_logit_diff'] <= 1e-4
    assert v['greedy_identical'] == 50
    assert v['greedy_texts_equal'] == v['greedy_texts_compared'] == 50
    # Not degenerate: the replies depend on the context.
    assert v['distinct_replies'] >= 5
    assert v['mean_reply_tokens'] > 2
    folder = chitchat_export.out_dir
    assert _read(folder, 'verification.json') == v
    for name in (
        'config.json',
        'generation_config.json',
        'model.safetensors',
        'tokenizer.json',
        'tokenizer_config.json',
        'parlai_inputs.py',
        'parlai_inputs.json',
        'README.md',
    ):
        assert os.path.isfile(os.path.join(folder, name)), name
    config = _read(folder, 'config.json')
    assert config['architectures'] == ['BlenderbotForConditionalGeneration']
    assert (config['encoder_layers'], config['decoder_layers'], config['d_model']) == (
        2,
        2,
        64,
    )
    assert config['scale_embedding'] is True and config['tie_word_embeddings'] is True
    generation = _read(folder, 'generation_config.json')
    # ParlAI: at most 16 reply tokens after [start]; blocking 2 and 2; greedy.
    assert generation['max_length'] == 17
    assert generation['no_repeat_ngram_size'] == 2
    assert generation['encoder_no_repeat_ngram_size'] == 2
    assert generation['num_beams'] == 1
    assert generation['decoder_start_token_id'] == 1
    assert generation['forced_eos_token_id'] == 2
    readme = open(os.path.join(folder, 'README.md')).read()
    assert 'BlenderbotForConditionalGeneration' in readme
    assert 'greedy replies identical token for token: 50/50' in readme
    assert 'The last 32 tokens are kept.' in readme


def test_export_loads_with_auto_classes(chitchat_export, chitchat_model, datapath):
    """AutoModel/AutoTokenizer load it; a one-turn text gives ParlAI's ids and logits."""
    from anti_scaling.model_files import load_generator_agent, model_file_opt

    folder = chitchat_export.out_dir
    model = transformers.AutoModelForSeq2SeqLM.from_pretrained(folder).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    agent = load_generator_agent(model_file_opt(chitchat_model, datapath, {}))
    agent.model.eval()
    text = "Hi there!! I'm fine, thanks -- and YOU? " * 3
    ids = tokenizer(text, truncation=True)['input_ids']
    assert ids == agent.dict.txt2vec(text)[-32:]
    assert len(ids) == 32
    final_bias = model.final_logits_bias[0]
    assert final_bias[1].item() == torch.tensor(-1e20).item()
    assert final_bias[2:].abs().max().item() == 0
    xs = torch.tensor([ids])
    ys = torch.tensor([agent.dict.txt2vec('me too') + [2]])
    with torch.no_grad():
        ours = agent.model(xs, ys=ys)[0]
        theirs = model(
            input_ids=xs,
            decoder_input_ids=torch.cat([torch.tensor([[1]]), ys[:, :-1]], 1),
        ).logits
    assert torch.allclose(ours, theirs, atol=1e-4, rtol=0)


def test_int8_copy(chitchat_export):
    """int8/model_int8.pt: encoder and decoder linear layers int8, close to float."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    folder = chitchat_export.out_dir
    assert os.path.isfile(os.path.join(folder, 'int8', 'model_int8.pt'))
    parlai_inputs = load_helper(folder)
    quantized = parlai_inputs.load_int8(folder)
    model = transformers.AutoModelForSeq2SeqLM.from_pretrained(folder).eval()
    kinds = {
        type(m)
        for name, m in quantized.model.named_modules()
        if name.endswith(('fc1', 'fc2', 'q_proj', 'out_proj'))
    }
    assert kinds == {DynamicLinear}
    # 2 + 2 layers: 6 linear layers per encoder layer, 10 per decoder layer.
    assert sum(isinstance(m, DynamicLinear) for m in quantized.modules()) == 32
    assert type(quantized.lm_head) is torch.nn.Linear
    assert quantized.generation_config.to_dict() == model.generation_config.to_dict()
    inputs = parlai_inputs.ParlaiInputs.from_pretrained(folder)
    batch = inputs([['hello there', 'hi! how are you doing today?']])
    decoder = torch.tensor([[1, 5, 6, 7]])
    with torch.no_grad():
        fp = model(**batch, decoder_input_ids=decoder).logits[..., 2:]
        q = quantized(**batch, decoder_input_ids=decoder).logits[..., 2:]
    difference = (fp - q).abs().max().item()
    assert 0 < difference < 0.05 * fp.abs().max().item()


def test_xlm_with_scaling_segments_and_sinusoids(tmp_path, datapath, chitchat_model):
    """BlenderbotSmall: untied scaled decoder embeddings, folded segments and scaling."""
    model_file = random_parlai_model(
        datapath,
        str(tmp_path / 'xlm' / 'model'),
        variant='xlm',
        embedding_size=32,
        ffn_size=64,
        n_heads=4,
        n_layers=2,
        n_segments=2,
        output_scaling=0.5,
        embeddings_scale=True,
        activation='relu',
        learn_positional_embeddings=False,
        dict_file=chitchat_model + '.dict',
        dict_tokenizer='re',
        dict_lower=True,
        text_truncate=24,
        label_truncate=8,
    )
    result = export_to_hf(
        model_file,
        str(tmp_path / 'hf'),
        datapath,
        verify=True,
        verify_options={'examples': 10},
    )
    v = result.verification
    assert v['max_abs_logit_diff'] <= 1e-4
    assert v['greedy_identical'] == v['context_ids_equal'] == 10
    model = transformers.AutoModelForSeq2SeqLM.from_pretrained(result.out_dir)
    assert type(model).__name__ == 'BlenderbotSmallForConditionalGeneration'
    shared = model.model.shared.weight
    assert torch.equal(model.model.decoder.embed_tokens.weight, shared * math.sqrt(32))
    assert torch.equal(model.model.encoder.embed_tokens.weight, shared)
    assert model.config.activation_function == 'relu'


def test_bart_with_gpt2_dictionary(tmp_path, datapath):
    """Bart: offset positions, [end, start] decoding, a gpt2 dictionary."""
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
    result = export_to_hf(
        model_file,
        str(tmp_path / 'hf'),
        datapath,
        verify=True,
        verify_options={'examples': 10},
    )
    v = result.verification
    assert v['max_abs_logit_diff'] <= 1e-4
    assert v['greedy_identical'] == v['context_ids_equal'] == v['label_ids_equal'] == 10
    generation = _read(result.out_dir, 'generation_config.json')
    assert generation['decoder_start_token_id'] == 2
    assert generation['forced_bos_token_id'] == 1
    assert generation['max_length'] == 14
    agent, _ = load_for_export(model_file, datapath)
    tokenizer = transformers.AutoTokenizer.from_pretrained(result.out_dir)
    text = 'Ünïcode ☃ and   spaces, numbers 123!'
    assert tokenizer(text)['input_ids'] == [1, *agent.dict.txt2vec(text), 2]
    model = transformers.AutoModelForSeq2SeqLM.from_pretrained(result.out_dir)
    table = model.model.encoder.embed_positions.weight
    assert torch.equal(table[2:], agent.model.encoder.position_embeddings.weight)


def _nothing_written(parent: str, before: set[str]) -> None:
    assert set(os.listdir(parent)) == before


def test_bad_inputs_write_nothing(tmp_path, datapath, chitchat_model, chitchat_export):
    """Each refusal is one line and leaves no file behind."""
    out = tmp_path / 'out'
    before = set(os.listdir(tmp_path))

    aiayn = random_parlai_model(
        datapath,
        str(tmp_path / 'aiayn' / 'model'),
        variant='aiayn',
        embedding_size=16,
        ffn_size=32,
        n_heads=2,
        n_layers=1,
        dict_file=chitchat_model + '.dict',
    )
    before = set(os.listdir(tmp_path))
    with pytest.raises(DistillationError, match='--variant aiayn has no exact') as e:
        export_to_hf(aiayn, str(out), datapath)
    assert '\n' not in str(e.value)
    _nothing_written(str(tmp_path), before)

    student = tmp_path / 'student'
    student.mkdir()
    states = torch.load(chitchat_model, weights_only=False)
    states['model']['distill_projections.enc_hid_0.weight'] = torch.zeros(4, 4)
    torch.save(states, student / 'model')
    opt = json.load(open(chitchat_model + '.opt'))
    opt['model'] = 'anti_scaling.distillation:DistillNarrowTransformerAgent'
    json.dump(opt, open(student / 'model.opt', 'w'))
    shutil.copy(chitchat_model + '.dict', student / 'model.dict')
    before = set(os.listdir(tmp_path))
    with pytest.raises(DistillationError, match='strip it first'):
        export_to_hf(str(student / 'model'), str(out), datapath)
    _nothing_written(str(tmp_path), before)

    spaced = tmp_path / 'spaced'
    shutil.copytree(os.path.dirname(chitchat_model), spaced)
    opt = json.load(open(spaced / 'model.opt'))
    opt['dict_tokenizer'] = 'bpe'
    json.dump(opt, open(spaced / 'model.opt', 'w'))
    before = set(os.listdir(tmp_path))
    with pytest.raises(DistillationError, match='--dict-tokenizer bpe cannot be'):
        export_to_hf(str(spaced / 'model'), str(out), datapath)
    _nothing_written(str(tmp_path), before)

    existing = chitchat_export.out_dir
    listing = sorted(os.listdir(existing))
    with pytest.raises(DistillationError, match='exists: pass --overwrite'):
        export_to_hf(chitchat_model, existing, datapath)
    assert sorted(os.listdir(existing)) == listing


def test_failed_verification_writes_nothing(tmp_path, datapath, chitchat_model):
    """A verification that finds a difference stops the export before the rename."""

    before = set(os.listdir(tmp_path))
    with pytest.raises(DistillationError, match='verification failed: logits'):
        export_to_hf(
            chitchat_model,
            str(tmp_path / 'hf'),
            datapath,
            verify=True,
            verify_options={'examples': 3, 'tolerance': 0.0},
        )
    _nothing_written(str(tmp_path), before)


def test_command_line(tmp_path, datapath, chitchat_model, capsys):
    """The script: one line and exit code 2 on bad input; a summary on success."""
    from anti_scaling.scripts import export_hf

    out = tmp_path / 'hf'
    out.mkdir()
    code = export_hf.main([chitchat_model, str(out), '-dp', datapath])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith('anti_scaling: error: ') and err.count('\n') == 1
    code = export_hf.main([chitchat_model, str(out), '-dp', datapath, '--overwrite'])
    assert code == 0
    assert 'BlenderbotForConditionalGeneration' in capsys.readouterr().out
    assert os.path.isfile(out / 'model.safetensors')


def test_contexts_longer_than_the_positions_are_truncated(tmp_path, datapath):
    """No --text-truncate and 16 positions: verified on chitchat, cut as the model must."""
    from hf_support import CHITCHAT_MODEL

    model_file = random_parlai_model(
        datapath,
        str(tmp_path / 'short' / 'model'),
        variant='prelayernorm',
        embedding_size=16,
        ffn_size=32,
        n_heads=2,
        n_layers=1,
        n_positions=16,
        dict_tokenizer='re',
        dict_lower=True,
        dict_file=str(tmp_path / 'short' / 'model.dict'),
        task=CHITCHAT_MODEL['task'],
        dict_maxtokens=500,
    )
    assert json.load(open(model_file + '.opt')).get('text_truncate') is None
    result = export_to_hf(
        model_file,
        str(tmp_path / 'hf'),
        datapath,
        verify=True,
        verify_options={'examples': 10},
    )
    v = result.verification
    assert v['greedy_identical'] == v['context_ids_equal'] == 10
    assert _read(result.out_dir, 'parlai_inputs.json')['text_truncate'] == 16
