"""Every dictionary a ParlAI generator can have, through every part of the package.

For each ``--dict-tokenizer`` (built offline, see ``dictionary_support``): the
dictionary gives the ids its tokenizer defines, the four agents distil a teacher
that uses it, a teacher-output cache fingerprints its files, pseudo-labels,
stripping and the report work, and nothing is ever downloaded.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import sys
import tarfile

import pytest
import sacrebleu
import torch
from dictionary_support import (
    MULTI_TURN_ARGS,
    SPECIAL_TOKENS,
    TASK_ARGS,
    TASK_OPTIONS,
    TOKENIZERS,
    DownloadAttempted,
    build_workspace,
    dictionary_options,
    no_downloads,
    seeded_train,
)
from helpers import make_agent, read_opt, run_batch
from parlai.core.agents import create_agent_from_model_file
from parlai.core.message import Message
from parlai.core.metrics import F1Metric, normalize_answer

from anti_scaling.agents.teacher import clear_teacher_cache
from anti_scaling.cache import open_for_run
from anti_scaling.compat import tolerant_byte_level_decoding
from anti_scaling.dictionaries import TOKENIZER_PACKAGES, side_files
from anti_scaling.errors import DistillationError
from anti_scaling.export.publish import publish_model
from anti_scaling.export.strip import remove_projection_matrices
from anti_scaling.model_files import read_model_opt as read_model_opt_checked
from anti_scaling.scripts import cache_teacher_outputs as cache_script
from anti_scaling.scripts import generate_pseudo_labels as labels_script
from anti_scaling.scripts.distill_report import main as report_main

NARROW = 'anti_scaling.distillation:DistillNarrowTransformerAgent'
WIDE = 'anti_scaling.distillation:DistillTransformerAgent'
BART_WIDE = 'anti_scaling.distillation:DistillBartAgent'
BART_NARROW = 'anti_scaling.distillation:DistillNarrowBartAgent'
#: Files a saved dictionary of each tokenizer keeps beside ``MODEL.dict``.
SIDE_FILES = {
    're': set(),
    'split': set(),
    'space': set(),
    'gpt2': set(),
    'bpe': {'.codecs'},
    'bytelevelbpe': {'-vocab.json', '-merges.txt'},
    'slow_bytelevel_bpe': {'-vocab.json', '-merges.txt'},
}
SMALL = {
    'embedding_size': 16,
    'ffn_size': 32,
    'n_heads': 2,
    'text_truncate': 32,
    'label_truncate': 16,
}
TERMS = {
    'hidden_loss_coeff': 1.0,
    'pred_loss_coeff': 1.0,
    'enc_dec_attn_loss_coeff': 1.0,
}


@pytest.fixture(scope='module')
def workspace(tmp_path_factory) -> dict[str, str]:
    """Tokenizer files, and a ParlAI data folder of our own with GPT-2's two files."""
    return build_workspace(str(tmp_path_factory.mktemp('dictionaries')))


@pytest.fixture(scope='module', params=TOKENIZERS)
def teachers(request, workspace, tmp_path_factory) -> dict[str, str]:
    """A transformer/generator and a bart teacher with this dictionary."""
    tokenizer = request.param
    root = tmp_path_factory.mktemp(f'teachers_{tokenizer}')
    options = {
        **TASK_OPTIONS,
        **SMALL,
        **dictionary_options(tokenizer, workspace),
        'batchsize': 8,
        'learningrate': 1e-2,
        'validation_max_exs': 8,
    }
    transformer = str(root / 'transformer' / 'model')
    bart = str(root / 'bart' / 'model')
    with no_downloads():
        seeded_train(
            workspace['datapath'],
            model='transformer/generator',
            model_file=transformer,
            n_layers=2,
            max_train_steps=12,
            **options,
        )
        bart_options = dict(options)
        if tokenizer == 'slow_bytelevel_bpe':
            bart_options['dict_file'] = workspace['slow_dict']
        seeded_train(
            workspace['datapath'],
            model='helpers:ScratchBartAgent',
            model_file=bart,
            n_encoder_layers=1,
            n_decoder_layers=2,
            n_positions=64,
            max_train_steps=4,
            **bart_options,
        )
    opt = read_opt(bart)
    opt['model'] = 'bart'
    with open(bart + '.opt', 'w') as fh:
        json.dump(opt, fh)
    yield {
        'tokenizer': tokenizer,
        'transformer': transformer,
        'bart': bart,
        'datapath': workspace['datapath'],
    }
    clear_teacher_cache()


def _examples(n: int = 8) -> list[dict]:
    from anti_scaling.tasks.chitchat.data import load_turns, select_conversations

    turns = load_turns()
    ids = select_conversations(turns, 'train', n)
    return [{'text': turns[i][0], 'labels': [turns[i][1]]} for i in ids]


def test_teacher_dictionary_gives_the_tokenizers_ids(teachers, workspace):
    tokenizer = teachers['tokenizer']
    model = teachers['transformer']
    assert set(side_files(model + '.dict')) == SIDE_FILES[tokenizer]
    with no_downloads():
        agent = make_agent(['-mf', model], teachers['datapath'])
    d = agent.dict
    texts = [m['labels'][0] for m in _examples(6)]
    for text in texts:
        ids = d.txt2vec(text)
        assert ids and d.unk_token not in [d[i] for i in ids], text
    text = ' '.join(texts)
    ids = d.txt2vec(text)
    if tokenizer in ('bytelevelbpe', 'slow_bytelevel_bpe', 'gpt2'):
        # ParlAI puts its 4 special tokens first: token t of the byte-level
        # vocabulary has id vocab[t] + 4, whatever the reader.
        from tokenizers import ByteLevelBPETokenizer

        with open(workspace['vocab'], encoding='utf-8') as fh:
            vocab = json.load(fh)
        prefix = tokenizer == 'bytelevelbpe'  # ParlAI adds the space for HF only
        hf = ByteLevelBPETokenizer(workspace['vocab'], workspace['merges'], prefix)
        assert ids == [vocab[t] + 4 for t in hf.encode(text).tokens]
        assert len(ids) < len(text.encode('utf-8'))  # merged pieces, not bytes
        assert d.vec2txt(ids) == text
    elif tokenizer == 'bpe':
        pieces = [d[i] for i in ids]
        assert any(p.endswith('@@') for p in pieces)  # subword-nmt split words
        words = d.bpe.splitter.findall(text)
        assert d.vec2txt(ids) == ' '.join(words)
        assert len(pieces) > len(words)
    else:
        assert [d[i] for i in ids] == d.tokenize(text)
    if tokenizer != 'bpe':  # special tokens stay whole, with their own ids
        special = [d[t] for t in SPECIAL_TOKENS]
        assert len(set(special)) == 2 and d.unk_token not in special
        with_special = d.txt2vec(f'{SPECIAL_TOKENS[0]} {texts[0]}')
        assert with_special[0] == special[0]
        # GPT-2's reader adds no space in front: the space after it stays with
        # the next word.
        rest = (
            f' {texts[0]}' if tokenizer in ('slow_bytelevel_bpe', 'gpt2') else texts[0]
        )
        assert with_special[1:] == d.txt2vec(rest)


def test_a_missing_tokenizer_package_stops_everything_with_one_line(
    teachers, tmp_path, monkeypatch, capsys
):
    tokenizer, teacher = teachers['tokenizer'], teachers['transformer']
    if tokenizer not in TOKENIZER_PACKAGES:
        pytest.skip(f'--dict-tokenizer {tokenizer} needs no package')
    module, package = TOKENIZER_PACKAGES[tokenizer]
    monkeypatch.setitem(sys.modules, module, None)  # import now fails
    message = (
        f'uses --dict-tokenizer {tokenizer}, which needs the Python package '
        f'{package}: pip install {package}'
    )
    with pytest.raises(DistillationError, match=message):
        read_model_opt_checked(teacher, 'teacher')
    student_dir = tmp_path / 'student'
    with pytest.raises(DistillationError, match=message):
        make_agent(
            [
                '-m',
                NARROW,
                '--teacher-model',
                teacher,
                '-mf',
                str(student_dir / 'model'),
            ],
            teachers['datapath'],
        )
    assert not student_dir.exists()
    out = tmp_path / 'report'
    args = ['--teacher', teacher, '--students', teachers['bart'], '--out', str(out)]
    assert report_main([*args, '-t', TASK_OPTIONS['task'], '--quiet']) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('anti_scaling: error: ')
    assert message in lines[0] and not out.exists()


def test_four_agents_distil_with_the_dictionary(teachers, tmp_path):
    tokenizer = teachers['tokenizer']
    messages = _examples(4)
    for agent_name, teacher, shape in (
        (WIDE, 'transformer', {'n_decoder_layers': 1}),
        (NARROW, 'transformer', {'n_layers': 1, 'embedding_size': 8, 'ffn_size': 16}),
        (BART_WIDE, 'bart', {'n_decoder_layers': 1}),
        (BART_NARROW, 'bart', {'n_layers': 1, 'embedding_size': 8, 'ffn_size': 16}),
    ):
        args = ['-m', agent_name, '--teacher-model', teachers[teacher]]
        for key, value in {**shape, **TERMS}.items():
            args += ['--' + key.replace('_', '-'), str(value)]
        model_file = str(tmp_path / agent_name.split(':')[1] / 'model')
        with no_downloads():
            agent = make_agent([*args, '-mf', model_file], teachers['datapath'])
            before = [p.detach().clone() for p in agent.model.parameters()]
            replies = run_batch(agent, messages)
            agent.save()
        assert len(replies) == len(messages)
        for reply in replies:
            for metric in ('loss', 'pred_loss', 'dec_hid_loss', 'enc_dec_attn_loss'):
                value = reply['metrics'][metric].value()
                assert math.isfinite(value) and value >= 0, (agent_name, metric)
        after = list(agent.model.parameters())
        assert any(not torch.equal(a, b) for a, b in zip(before, after))  # a step
        assert agent.dict.tok2ind == agent.teacher.dict.tok2ind
        # The saved student carries its dictionary's files, equal to the teacher's.
        teacher_dict = teachers[teacher] + '.dict'
        files = side_files(model_file + '.dict')
        assert set(files) == SIDE_FILES[tokenizer]
        for suffix, path in files.items():
            assert _read(path) == _read(teacher_dict + suffix), (agent_name, suffix)


def _read(path: str) -> bytes:
    with open(path, 'rb') as fh:
        return fh.read()


def _sha256(path: str) -> str:
    return hashlib.sha256(_read(path)).hexdigest()


def _expected_tokenizer_files(tokenizer: str, dict_file: str, datapath: str) -> dict:
    """The files besides the dictionary that a tokenizer reads (cache keys)."""
    gpt2 = os.path.join(datapath, 'gpt2')
    return {
        'bpe': {'bpe_codecs': dict_file + '.codecs'},
        'bytelevelbpe': {
            'bpe_vocab': dict_file + '-vocab.json',
            'bpe_merge': dict_file + '-merges.txt',
        },
        'slow_bytelevel_bpe': {
            'bpe_vocab': dict_file + '-vocab.json',
            'bpe_merge': dict_file + '-merges.txt',
        },
        'gpt2': {
            'bpe_vocab': os.path.join(gpt2, 'encoder.json'),
            'bpe_merge': os.path.join(gpt2, 'vocab.bpe'),
        },
    }.get(tokenizer, {})


def test_teacher_cache_records_and_checks_the_tokenizer_files(teachers, tmp_path):
    tokenizer, teacher = teachers['tokenizer'], teachers['transformer']
    datapath = teachers['datapath']
    cache_dir = str(tmp_path / 'cache')
    with no_downloads():
        cache_script.main(
            [
                '--teacher-model',
                teacher,
                *TASK_ARGS,
                '--cache-dir',
                cache_dir,
                '-dp',
                datapath,
                '--top-k',
                '4',
                '-bs',
                '8',
            ]
        )
    with open(os.path.join(cache_dir, 'meta.json')) as fh:
        recorded = json.load(fh)['dictionary']['sha256']
    expected = _expected_tokenizer_files(tokenizer, teacher + '.dict', datapath)
    assert recorded == {
        'dict_file': _sha256(teacher + '.dict'),
        **{key: _sha256(path) for key, path in expected.items()},
    }

    # A student reads its prediction targets from the cache.
    with no_downloads():
        agent = make_agent(
            [
                '-m',
                NARROW,
                '--teacher-model',
                teacher,
                '--teacher-cache',
                cache_dir,
                *TASK_ARGS,
                '--n-layers',
                '1',
                '--embedding-size',
                '8',
                '--ffn-size',
                '16',
                '--pred-loss-coeff',
                '1',
                '-mf',
                str(tmp_path / 'cached' / 'model'),
            ],
            datapath,
        )
        replies = run_batch(agent, _examples(4))
    assert agent.teacher.model is None  # the teacher never ran
    assert all(math.isfinite(r['metrics']['pred_loss'].value()) for r in replies)

    # Another vocabulary or merges file: the cache no longer fits.
    for key, path in expected.items():
        original = _read(path)
        try:
            with open(path, 'ab') as fh:
                fh.write(b'\n')
            with pytest.raises(
                DistillationError, match=f'the {key.replace("_", " ")} content differs'
            ):
                open_for_run(
                    cache_dir,
                    teacher,
                    teacher + '.dict',
                    {**read_opt(teacher), 'datapath': datapath, **TASK_OPTIONS},
                )
        finally:
            with open(path, 'wb') as fh:
                fh.write(original)


#: Dictionaries that split joined turns differently from single ones: ParlAI's
#: history joins the turns' ids, so their gold contexts cannot be written as text.
JOINS_DIFFER = ('bytelevelbpe', 'space')


def _pseudo_labels(teachers, output: str, mode: str) -> dict:
    return labels_script.main(
        [
            '--teacher-model',
            teachers['transformer'],
            *MULTI_TURN_ARGS,
            '-dt',
            'valid',
            '--output',
            output,
            '-dp',
            teachers['datapath'],
            '-bs',
            '8',
            '--history-replies',
            mode,
            '--inference',
            'greedy',
        ]
    )


def test_pseudo_labels_are_the_teachers_replies(teachers, tmp_path):
    tokenizer, teacher = teachers['tokenizer'], teachers['transformer']
    mode = 'teacher' if tokenizer in JOINS_DIFFER else 'gold'
    output = str(tmp_path / 'pseudo.jsonl')
    if mode == 'teacher':
        refused = str(tmp_path / 'refused.jsonl')
        with pytest.raises(
            DistillationError, match=f'{tokenizer}.*use --history-replies teacher'
        ):
            _pseudo_labels(teachers, refused, 'gold')
        assert not os.path.exists(refused)
    with no_downloads():
        summary = _pseudo_labels(teachers, output, mode)
    with open(output) as fh:
        episodes = [json.loads(line)['dialog'] for line in fh]
    assert summary['kept'] == sum(len(e) for e in episodes) > 0
    if mode == 'teacher':
        assert max(len(e) for e in episodes) > 1  # multi-turn episodes kept
    else:  # gold history joined into single examples
        assert {len(e) for e in episodes} == {1}
        assert any('\n' in e[0][0]['text'] for e in episodes)
    # Each reply is what the teacher says, greedily, in the episode as written.
    with no_downloads(), tolerant_byte_level_decoding():
        agent = create_agent_from_model_file(
            teacher,
            {
                'datapath': teachers['datapath'],
                'inference': 'greedy',
                'skip_generation': False,
            },
        )
        for episode in episodes[:4]:
            agent.reset()
            for i, (context, reply) in enumerate(episode):
                done = i == len(episode) - 1
                agent.observe(Message({'text': context['text'], 'episode_done': done}))
                # act() puts the teacher's reply into its own history
                assert agent.act()['text'] == reply['text']


def _forced_metrics(model_file: str, datapath: str) -> dict:
    """ParlAI's eval_model of a plain transformer/generator on 8 valid examples."""
    from parlai.scripts.eval_model import EvalModel

    report = EvalModel.main(
        model='transformer/generator',
        model_file=model_file,
        datapath=datapath,
        datatype='valid',
        num_examples=8,
        batchsize=4,
        skip_generation=True,
        **TASK_OPTIONS,
    )
    return {k: float(report[k]) for k in ('ppl', 'token_acc')}


def test_stripped_student_carries_its_dictionary_and_enters_the_report(
    teachers, tmp_path
):
    tokenizer = teachers['tokenizer']
    datapath = teachers['datapath']
    # A private copy of the teacher, removed below: nothing may still point at it.
    teacher = str(tmp_path / 'teacher' / 'model')
    shutil.copytree(os.path.dirname(teachers['transformer']), os.path.dirname(teacher))
    student = str(tmp_path / 'student' / 'model')
    with no_downloads():
        valid, _ = seeded_train(
            datapath,
            model=NARROW,
            teacher_model=teacher,
            model_file=student,
            n_layers=1,
            embedding_size=8,
            ffn_size=16,
            max_train_steps=3,
            batchsize=8,
            validation_max_exs=8,
            **TASK_OPTIONS,
            **TERMS,
        )
    before = {k: float(valid[k]) for k in ('ppl', 'token_acc')}  # 8 valid examples
    plain = str(tmp_path / 'plain' / 'model')
    remove_projection_matrices(student, output=plain)
    assert set(side_files(plain + '.dict')) == SIDE_FILES[tokenizer]
    for suffix, path in side_files(plain + '.dict').items():
        assert _sha256(path) == _sha256(student + '.dict' + suffix)
    opt = read_opt(plain)
    for key in ('bpe_vocab', 'bpe_merge'):
        assert not opt.get(key) or opt[key].startswith(plain + '.dict'), key

    # Move the plain model; delete the student and the teacher it came from.
    moved = str(tmp_path / 'moved' / 'model')
    shutil.move(os.path.dirname(plain), os.path.dirname(moved))
    shutil.rmtree(os.path.dirname(student))
    shutil.rmtree(os.path.dirname(teacher))
    # Published to the zoo and unpacked elsewhere, it still tokenises as before.
    archive = publish_model(moved, f'dict-{tokenizer}', str(tmp_path / 'dist')).archive
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
        tar.extractall(tmp_path / 'unpacked', filter='data')
    assert names == {'model', 'model.opt', 'model.dict', 'model.dict.opt'} | {
        'model.dict' + suffix for suffix in SIDE_FILES[tokenizer]
    }
    # Only gpt2 reads a vocabulary from the data folder.
    own_datapath = datapath if tokenizer == 'gpt2' else str(tmp_path / 'empty_data')
    with no_downloads():
        for model_file in (moved, str(tmp_path / 'unpacked' / 'model')):
            after = _forced_metrics(model_file, own_datapath)
            assert after == pytest.approx(before, rel=1e-5)

    # The report: generation, F1 and BLEU on the dictionary's decoded text.
    out = tmp_path / 'report'
    with no_downloads():
        code = report_main(
            [
                '--teacher',
                teachers['transformer'],
                '--students',
                moved,
                '--out',
                str(out),
                '-t',
                TASK_OPTIONS['task'],
                '-dp',
                datapath,
                '--num-examples',
                '4',
                '--beam-size',
                '2',
                '--warmup',
                '0',
                '--quiet',
                '--',
                *TASK_ARGS[2:],
            ]
        )
    assert code == 0
    with open(out / 'report.json') as fh:
        report = json.load(fh)
    references = report['references']
    for decoding, by_model in report['replies'].items():
        teacher_replies = by_model[report['models'][0]['label']]
        for row in report['models']:
            replies = by_model[row['label']]
            figures = row['generation'][decoding]
            f1 = sum(
                F1Metric.compute(r, [ref]).value()
                for r, ref in zip(replies, references)
            ) / len(references)
            assert figures['f1'] == pytest.approx(f1)
            norm = [normalize_answer(r) for r in replies]
            assert figures['bleu_ref'] == pytest.approx(
                sacrebleu.corpus_bleu(
                    norm, [[normalize_answer(r) for r in references]]
                ).score
            )
            assert figures['bleu_teacher'] == pytest.approx(
                sacrebleu.corpus_bleu(
                    norm, [[normalize_answer(r) for r in teacher_replies]]
                ).score
            )


def test_byte_level_reply_starting_mid_word_decodes_within_the_workaround(workspace):
    from parlai.core.dict import DictionaryAgent
    from parlai.core.opt import Opt

    d = DictionaryAgent(
        Opt(
            dict_tokenizer='bytelevelbpe',
            bpe_vocab=workspace['vocab'],
            bpe_merge=workspace['merges'],
        )
    )
    word_start = d.txt2vec('How are you?')
    mid_word = [d['r'], *word_start]  # 'r' has no leading space marker
    with pytest.raises(AssertionError):  # ParlAI's own decoder
        d.vec2txt(mid_word)
    assert d.vec2txt(word_start) == 'How are you?'
    with tolerant_byte_level_decoding():
        assert d.vec2txt(mid_word) == 'r How are you?'
        assert d.vec2txt(word_start) == 'How are you?'
    with pytest.raises(AssertionError):  # ParlAI is left as it was
        d.vec2txt(mid_word)


def test_the_download_guard_catches_parlais_gpt2_download(tmp_path):
    """Without GPT-2's files in the data folder ParlAI would download them."""
    from parlai.core.dict import DictionaryAgent
    from parlai.core.opt import Opt

    with no_downloads() as attempts, pytest.raises(DownloadAttempted):
        DictionaryAgent(Opt(dict_tokenizer='gpt2', datapath=str(tmp_path)))
    assert attempts and attempts[0].endswith('vocab.bpe')
