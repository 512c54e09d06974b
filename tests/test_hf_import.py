"""Hugging Face transformers -> ParlAI, and both round trips, offline."""

from __future__ import annotations

import json
import os

import pytest
import torch
from hf_support import chitchat_texts, random_hf_folder

from anti_scaling.errors import DistillationError
from anti_scaling.export.hf.from_hf import import_from_hf
from anti_scaling.export.hf.to_hf import export_to_hf
from anti_scaling.model_files import load_generator_agent, model_file_opt

transformers = pytest.importorskip('transformers')
NEG_INF = torch.tensor(-1e20).item()
TEXTS = ["Hello there, it's me!", 'the  model   of distillation', 'Ünïcode ☃ text 42']


def _load(model_file: str, datapath: str):
    agent = load_generator_agent(model_file_opt(model_file, datapath, {}))
    agent.model.eval()
    return agent


def _hf(folder: str):
    model = transformers.AutoModelForSeq2SeqLM.from_pretrained(folder).eval()
    return model, transformers.AutoTokenizer.from_pretrained(folder)


def _logits(model, xs: torch.Tensor, decoder: torch.Tensor, pad: int) -> torch.Tensor:
    with torch.no_grad():
        return model(
            input_ids=xs, attention_mask=(xs != pad).long(), decoder_input_ids=decoder
        ).logits


def _batch(tokenizer, texts: list[str]) -> torch.Tensor:
    rows = [tokenizer(t)['input_ids'] for t in texts]
    out = torch.full((len(rows), max(map(len, rows))), tokenizer.pad_token_id)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row)
    return out


@pytest.mark.parametrize('family', ['blenderbot', 'blenderbot-small'])
def test_blenderbot_round_trip(tmp_path, datapath, family):
    """Random HF model -> ParlAI -> HF: the same logits; ParlAI masks its start token."""
    ids = random_hf_folder(str(tmp_path / 'hf'), family)
    start, pad = ids['<s>'], ids['<pad>']
    result = import_from_hf(
        str(tmp_path / 'hf'), str(tmp_path / 'pa' / 'model'), datapath
    )
    assert (result.model, result.dict_tokenizer, result.reordered) == (
        'transformer/generator',
        'bytelevelbpe',
        False,
    )
    agent = _load(result.model_file, datapath)
    assert agent.opt['variant'] == ('prelayernorm' if family == 'blenderbot' else 'xlm')
    assert agent.opt['history_add_global_end_token'] == 'end'
    model, tokenizer = _hf(str(tmp_path / 'hf'))
    for text in TEXTS + chitchat_texts(50):
        assert (
            agent.dict.txt2vec(text)
            == tokenizer(text, add_special_tokens=False)['input_ids']
        )
    xs = _batch(tokenizer, TEXTS)
    ys = _batch(tokenizer, ['a reply', 'another, longer reply', 'ok'])
    decoder = torch.cat([torch.full((3, 1), start), ys[:, :-1]], 1)
    original = _logits(model, xs, decoder, pad)
    with torch.no_grad():
        parlai = agent.model(xs, ys=ys)[0]
    others = [i for i in range(original.size(-1)) if i != start]
    assert torch.allclose(parlai[..., others], original[..., others], atol=1e-5, rtol=0)
    assert (parlai[..., start] == NEG_INF).all()

    back = export_to_hf(result.model_file, str(tmp_path / 'back'), datapath)
    model2, tokenizer2 = _hf(back.out_dir)
    for text in TEXTS:
        assert tokenizer2(text)['input_ids'] == tokenizer(text)['input_ids']
    again = _logits(model2, xs, decoder, pad)
    assert torch.equal(again[..., others], original[..., others])
    assert (again[..., start] == NEG_INF).all()


def test_bart_round_trip_reorders_special_tokens(tmp_path, datapath):
    """BART puts <s> at 0 and <pad> at 1; ParlAI wants null 0, start 1: rows move."""
    ids = random_hf_folder(str(tmp_path / 'hf'), 'bart')
    assert (ids['<s>'], ids['<pad>']) == (0, 1)
    result = import_from_hf(
        str(tmp_path / 'hf'), str(tmp_path / 'pa' / 'model'), datapath
    )
    assert (result.model, result.reordered) == ('bart', True)
    agent = _load(result.model_file, datapath)
    d = agent.dict
    assert [d[i] for i in range(4)] == ['<pad>', '<s>', '</s>', '<unk>']
    model, tokenizer = _hf(str(tmp_path / 'hf'))
    to_parlai = {i: d[tokenizer.convert_ids_to_tokens(i)] for i in range(len(d))}
    assert sorted(to_parlai.values()) == list(range(len(d)))

    def mapped(t: torch.Tensor) -> torch.Tensor:
        return t.clone().apply_(to_parlai.__getitem__)

    for text in TEXTS:
        hf_ids = tokenizer(text, add_special_tokens=False)['input_ids']
        assert d.txt2vec(text) == [to_parlai[i] for i in hf_ids]
    xs = _batch(tokenizer, TEXTS)
    # ParlAI's labels: the reply's tokens and </s>, without <s>.
    ys = _batch(tokenizer, ['a reply', 'another, longer reply', 'ok'])[:, 1:]
    decoder = torch.cat([torch.tensor([[2, 0]] * 3), ys[:, :-1]], 1)
    original = _logits(model, xs, decoder, ids['<pad>'])[:, 1:]
    with torch.no_grad():
        parlai = agent.model(mapped(xs), ys=mapped(ys))[0]
    order = torch.tensor([tokenizer.convert_tokens_to_ids(d[i]) for i in range(len(d))])
    assert torch.allclose(parlai, original[..., order], atol=1e-5, rtol=0)

    back = export_to_hf(result.model_file, str(tmp_path / 'back'), datapath)
    model2, _ = _hf(back.out_dir)
    again = _logits(model2, mapped(xs), mapped(decoder), 0)[:, 1:]
    assert torch.equal(again, original[..., order])


def test_parlai_round_trip(tmp_path, datapath, chitchat_model, chitchat_export):
    """ParlAI student -> HF -> ParlAI: identical logits, dictionary and text options."""
    result = import_from_hf(
        chitchat_export.out_dir, str(tmp_path / 'back' / 'model'), datapath
    )
    assert (result.dict_tokenizer, result.reordered) == ('re', False)
    original, back = _load(chitchat_model, datapath), _load(result.model_file, datapath)
    assert back.dict.tok2ind == original.dict.tok2ind
    for key in (
        'variant',
        'embeddings_scale',
        'activation',
        'dict_lower',
        'delimiter',
        'text_truncate',
        'label_truncate',
        'beam_block_ngram',
        'beam_context_block_ngram',
    ):
        assert back.opt[key] == original.opt[key], key
    xs = torch.tensor([original.dict.txt2vec('hi! how are you today?')])
    ys = torch.tensor([original.dict.txt2vec('fine thanks') + [2]])
    with torch.no_grad():
        assert torch.equal(back.model(xs, ys=ys)[0], original.model(xs, ys=ys)[0])


def test_imported_model_is_a_teacher(tmp_path, datapath, chitchat_export):
    """Our agents take the imported model as --teacher-model (a short distillation run)."""
    from helpers import train, train_reports

    teacher = import_from_hf(
        chitchat_export.out_dir, str(tmp_path / 'teacher' / 'model'), datapath
    ).model_file
    student = str(tmp_path / 'student' / 'model')
    train(
        datapath,
        task='anti_scaling.tasks.chitchat',
        chitchat_max_conversations=10,
        model='anti_scaling.distillation:DistillTransformerAgent',
        teacher_model=teacher,
        model_file=student,
        n_decoder_layers=1,
        pred_loss_coeff=1.0,
        max_train_steps=2,
        num_epochs=-1,
        batchsize=4,
        log_every_n_steps=1,
        validation_max_exs=4,
    )
    with open(student + '.opt') as fh:
        assert json.load(fh)['teacher_model'] == teacher
    with open(student + '.dict') as a, open(teacher + '.dict') as b:
        assert [line.split('\t')[0] for line in a] == [
            line.split('\t')[0] for line in b
        ]
    assert any(r.get('pred_loss', 0) > 0 for r in train_reports(student))


def test_import_refusals(tmp_path, datapath, chitchat_export):
    """One line each, nothing written."""
    out = tmp_path / 'out' / 'model'
    with pytest.raises(DistillationError, match='no config.json'):
        import_from_hf(str(tmp_path), str(out), datapath)
    t5 = tmp_path / 't5'
    t5.mkdir()
    (t5 / 'config.json').write_text(json.dumps({'model_type': 't5'}))
    with pytest.raises(DistillationError, match="model_type 't5' is not supported"):
        import_from_hf(str(t5), str(out), datapath)

    small = tmp_path / 'small'
    random_hf_folder(str(small), 'blenderbot-small')
    config = json.loads((small / 'config.json').read_text())
    config['scale_embedding'] = True
    (small / 'config.json').write_text(json.dumps(config))
    with pytest.raises(DistillationError, match='scales encoder embeddings but not'):
        import_from_hf(str(small), str(out), datapath)

    untied = tmp_path / 'untied'
    random_hf_folder(str(untied), 'blenderbot')
    tied = transformers.AutoModelForSeq2SeqLM.from_pretrained(str(untied))
    tied.config.tie_word_embeddings = False
    model = transformers.AutoModelForSeq2SeqLM.from_config(tied.config)
    model.load_state_dict(tied.state_dict())
    with torch.no_grad():
        model.lm_head.weight.mul_(2)
    model.save_pretrained(str(untied))
    with pytest.raises(DistillationError, match='lm_head.weight differs'):
        import_from_hf(str(untied), str(out), datapath)

    words = tmp_path / 'words'
    import shutil

    shutil.copytree(chitchat_export.out_dir, words)
    os.remove(words / 'parlai_inputs.json')
    with pytest.raises(DistillationError, match='WordLevel tokenizer without our'):
        import_from_hf(str(words), str(out), datapath)
    assert not (tmp_path / 'out').exists()

    existing = tmp_path / 'existing'
    existing.mkdir()
    (existing / 'model').write_text('keep me')
    with pytest.raises(DistillationError, match='exists: pass --overwrite'):
        import_from_hf(chitchat_export.out_dir, str(existing / 'model'), datapath)
    assert os.listdir(existing) == ['model']
    assert (existing / 'model').read_text() == 'keep me'


def test_command_line(tmp_path, datapath, chitchat_export, capsys):
    from anti_scaling.scripts import import_hf

    code = import_hf.main([str(tmp_path), str(tmp_path / 'm'), '-dp', datapath])
    err = capsys.readouterr().err
    assert code == 2 and err.count('\n') == 1 and 'no config.json' in err
    out = str(tmp_path / 'pa' / 'model')
    assert import_hf.main([chitchat_export.out_dir, out, '-dp', datapath]) == 0
    assert '-m transformer/generator' in capsys.readouterr().out
    assert all(os.path.isfile(out + s) for s in ('', '.opt', '.dict'))
