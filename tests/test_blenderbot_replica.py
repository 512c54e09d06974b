"""A BlenderBot 2.7B replica, distilled end to end with both BlenderBot recipes.

The teacher is trained offline with every option of BlenderBot 2.7B's published
fine-tuning command (ParlAI ``projects/recipes/README.md``) except the ones that
size it, its data and its starting point (:data:`REPLICA_CHANGES` says why each
differs). It has BlenderBot's shape of stacks, 2 encoder and 8 decoder layers,
at a CPU-sized width, and a byte-level BPE dictionary trained with
``tokenizers``. ``--recipe blender_400Mdistill`` (narrow) and
``--recipe blender_1Bdistill`` (wide) distil it with their sizes overridden on
the command line; the students strip, evaluate and generate as plain
``transformer/generator`` models, and appear in the distillation report.
"""

from __future__ import annotations

import json
import os

import pytest
import torch
from dictionary_support import no_downloads, seeded_train, train_byte_level_bpe
from helpers import read_opt, train_reports
from parlai.core.agents import create_agent_from_model_file
from parlai.core.message import Message

from anti_scaling.compat import compatible_lr_schedulers, tolerant_byte_level_decoding
from anti_scaling.model_files import load_checkpoint
from anti_scaling.scripts.distill_report import main as report_main
from anti_scaling.scripts.remove_projection_matrices import main as strip_main
from anti_scaling.zoo.recipes import RECIPES

#: BlenderBot 2.7B's fine-tuning command, option by option (flag dests).
BLENDER_3B_FINE_TUNING = {
    'task': 'blended_skill_talk,wizard_of_wikipedia,convai2:normalized,'
    'empathetic_dialogues',
    'multitask_weights': '1,3,3,3',
    'validation_every_n_epochs': 0.25,
    'attention_dropout': 0.0,
    'batchsize': 128,
    'model': 'transformer/generator',
    'embedding_size': 2560,
    'ffn_size': 10240,
    'variant': 'prelayernorm',
    'n_heads': 32,
    'n_positions': 128,
    'n_encoder_layers': 2,
    'n_decoder_layers': 24,
    'history_add_global_end_token': 'end',
    'delimiter': '  ',
    'dict_tokenizer': 'bytelevelbpe',
    'dropout': 0.1,
    'fp16': True,
    'init_model': 'zoo:blender/reddit_3B/model',
    'dict_file': 'zoo:blender/reddit_3B/model.dict',
    'label_truncate': 128,
    'log_every_n_secs': 10,
    'learningrate': 7e-06,
    'lr_scheduler': 'reduceonplateau',
    'lr_scheduler_patience': 3,
    'optimizer': 'adam',
    'relu_dropout': 0.0,
    'activation': 'gelu',
    'model_parallel': True,
    'save_after_valid': True,
    'text_truncate': 128,
    'truncate': 128,
    'warmup_updates': 100,
    'fp16_impl': 'mem_efficient',
    'update_freq': 2,
    'gradient_clip': 0.1,
    'skip_generation': True,
    'validation_patience': 10,
    'validation_metric': 'ppl',
    'validation_metric_mode': 'min',
}
#: What the replica changes, and why: size, data, starting point, run length.
REPLICA_CHANGES = {
    # CPU-sized, BlenderBot's stacks (2 encoder layers, a deeper decoder).
    'embedding_size': 32,
    'ffn_size': 128,
    'n_heads': 4,
    'n_decoder_layers': 8,
    'batchsize': 4,
    # Offline data: real conversations shipped in a wheel, multi-turn.
    'task': 'anti_scaling.tasks.chitchat',
    'multitask_weights': [1],
    'chitchat_max_conversations': 8,
    # Trained from scratch (no reddit_3B download), with its own dictionary; a
    # from-scratch learning rate instead of the fine-tuning one, warm-up and
    # validation scaled to a short run.
    'init_model': None,  # (None: not given)
    'dict_file': None,
    'learningrate': 3e-3,
    'warmup_updates': 4,
    'log_every_n_secs': -1,
    'validation_max_exs': 16,
    'max_train_steps': 16,
    'seed': 0,
}
#: The recipes' students, sized for this teacher on the command line: half the
#: decoder layers as in the recipes (12 of 24), the narrow one at half width.
STUDENTS = {
    'narrow': (
        'blender_400Mdistill',
        {'embedding_size': 16, 'ffn_size': 64, 'n_heads': 4},
    ),
    'wide': ('blender_1Bdistill', {}),
}
STUDENT_TRAINING = {
    'task': 'anti_scaling.tasks.chitchat',
    'chitchat_max_conversations': 8,
    'n_decoder_layers': 4,
    'optimizer': 'adam',
    'learningrate': 3e-3,
    'lr_scheduler': 'none',
    'batchsize': 4,
    'max_train_steps': 8,
    'skip_generation': True,
    'validation_every_n_epochs': -1,
    'validation_max_exs': 16,
    'log_every_n_steps': 2,
    'seed': 0,
}


@pytest.fixture(scope='module')
def replica(tmp_path_factory) -> dict[str, str]:
    """Paths: the data folder, the teacher and both students (unstripped)."""
    root = tmp_path_factory.mktemp('blenderbot')
    datapath = str(root / 'data')
    vocab, merges = train_byte_level_bpe(str(root / 'bpe'), vocab_size=1000)
    teacher = str(root / 'teacher' / 'model')
    options = {**BLENDER_3B_FINE_TUNING, **REPLICA_CHANGES}
    options = {k: v for k, v in options.items() if v is not None}  # unset ones
    options.update(bpe_vocab=vocab, bpe_merge=merges, model_file=teacher)
    # ParlAI's reduceonplateau scheduler passes an argument torch 2.13 removed;
    # plain ParlAI training needs our workaround (our agents apply it themselves).
    with no_downloads(), compatible_lr_schedulers():
        seeded_train(datapath, **options)
    paths = {'datapath': datapath, 'teacher': teacher}
    for name, (recipe, sizes) in STUDENTS.items():
        student = str(root / name / 'model')
        with no_downloads():
            seeded_train(
                datapath,
                model=RECIPES[recipe].agent,
                teacher_model=teacher,
                recipe=recipe,
                model_file=student,
                **STUDENT_TRAINING,
                **sizes,
            )
        paths[name] = student
    return paths


def test_teacher_has_every_option_of_the_published_command(replica):
    opt = read_opt(replica['teacher'])
    for key, value in BLENDER_3B_FINE_TUNING.items():
        if key not in REPLICA_CHANGES:
            assert opt[key] == value, key
    assert opt['dict_tokenizer'] == 'bytelevelbpe'
    assert os.path.isfile(replica['teacher'] + '.dict-vocab.json')
    # --fp16 true pads the dictionary to a multiple of 8 tokens even on a CPU
    # (where ParlAI computes in float32: it needs CUDA for half precision).
    states = load_checkpoint(replica['teacher'])
    rows = states['model']['embeddings.weight'].shape[0]
    assert rows % 8 == 0
    with open(replica['teacher'] + '.dict', encoding='utf-8') as fh:
        assert rows > sum(1 for _ in fh)  # padding tokens beyond the saved file
    assert states['model']['embeddings.weight'].dtype == torch.float32
    assert states['lr_scheduler_type'] == 'reduceonplateau'
    layers = {
        k.split('.')[2] for k in states['model'] if k.startswith('decoder.layers.')
    }
    assert len(layers) == 8


@pytest.mark.parametrize('name', list(STUDENTS))
def test_recipes_distil_the_replica(replica, name):
    recipe = RECIPES[STUDENTS[name][0]]
    opt = read_opt(replica[name])
    # The recipe's loss weights and the teacher's text and dictionary options
    for key in ('hidden_loss_coeff', 'pred_loss_coeff', 'task_loss_coeff'):
        assert opt[key] == recipe.options[key]
    for key in ('variant', 'activation', 'delimiter', 'history_add_global_end_token'):
        assert opt[key] == read_opt(replica['teacher'])[key], key
    assert opt['n_decoder_layers'] == 4 and opt['decoder_layer_map'] == '1,3,5,7'
    width = STUDENTS[name][1].get('embedding_size', 32)
    assert opt['embedding_size'] == width
    # The teacher's dictionary, --fp16 padding included (a multiple of 8 tokens).
    rows = [
        load_checkpoint(path)['model']['embeddings.weight'].shape[0]
        for path in (replica['teacher'], replica[name])
    ]
    assert rows[0] == rows[1] and rows[1] % 8 == 0
    reports = train_reports(replica[name])
    terms = {'loss', 'pred_loss', 'enc_hid_loss', 'dec_hid_loss', 'distill_loss'}
    if not recipe.wide:
        terms |= {'enc_emb_loss', 'enc_self_attn_loss', 'enc_dec_attn_loss'}
    for report in reports:
        assert terms <= set(report)
    for term in ('distill_loss', 'pred_loss'):
        assert reports[-1][term] < reports[0][term], term


@pytest.fixture(scope='module')
def stripped(replica, tmp_path_factory) -> dict[str, str]:
    """The students as plain models, with the command line users run."""
    out = {}
    root = tmp_path_factory.mktemp('plain')
    for name in STUDENTS:
        plain = str(root / name / 'model')
        args = [replica[name], '--output', plain]
        if name == 'wide':
            args.append('--opt-only')
        assert strip_main(args) == 0
        out[name] = plain
    return out


@pytest.mark.parametrize('name', list(STUDENTS))
def test_stripped_students_evaluate_and_generate_as_plain_generators(
    replica, stripped, name
):
    from parlai.scripts.eval_model import EvalModel

    plain = stripped[name]
    opt = read_opt(plain)
    assert opt['model'] == 'transformer/generator' and 'teacher_model' not in opt
    states = load_checkpoint(plain)
    assert not [k for k in states['model'] if k.startswith('distill_projections')]
    evaluation = {
        'model_file': plain,
        'datapath': replica['datapath'],
        'task': 'anti_scaling.tasks.chitchat',
        'chitchat_max_conversations': 8,
        'datatype': 'valid',
        'num_examples': 16,
        'batchsize': 4,
    }
    # Teacher forcing: the figures of the student before stripping, exactly.
    with no_downloads():
        forced = EvalModel.main(
            **evaluation, model='transformer/generator', skip_generation=True
        )
        before = EvalModel.main(
            **{**evaluation, 'model_file': replica[name]}, skip_generation=True
        )
    for metric in ('ppl', 'token_acc', 'exs'):
        assert float(forced[metric]) == pytest.approx(float(before[metric]), rel=1e-6)
    # Generation, as ParlAI's eval_model and interactive use run it (replies of
    # up to 16 tokens). ParlAI's bytelevelbpe decoder fails on a reply that
    # starts mid-word, which an undertrained student's may; the workaround
    # decodes such a reply as is.
    short = {'label_truncate': 16, 'skip_generation': False}
    with no_downloads(), tolerant_byte_level_decoding():
        generated = EvalModel.main(
            **{**evaluation, 'num_examples': 8},
            **short,
            model='transformer/generator',
            inference='beam',
            beam_size=2,
        )
        agent = create_agent_from_model_file(
            plain, {'datapath': replica['datapath'], **short}
        )
        agent.observe(
            Message({'text': 'hi! how was your weekend?', 'episode_done': True})
        )
        reply = agent.act()['text']
    assert 0 <= float(generated['f1']) <= 1 and float(generated['exs']) == 8
    assert isinstance(reply, str) and reply.strip()
    assert type(agent).__module__.startswith('parlai.agents.transformer')


def test_students_appear_in_the_distillation_report(replica, stripped, tmp_path):
    out = tmp_path / 'report'
    with no_downloads():
        code = report_main(
            [
                '--teacher',
                replica['teacher'],
                '--students',
                stripped['narrow'],
                stripped['wide'],
                '--labels',
                'blender_replica',
                'narrow_400M_recipe',
                'wide_1B_recipe',
                '--out',
                str(out),
                '-t',
                'anti_scaling.tasks.chitchat',
                '-dp',
                replica['datapath'],
                '--num-examples',
                '3',
                '--batchsize',
                '3',
                '--beam-size',
                '2',
                '--warmup',
                '0',
                '--quiet',
                '--',
                '--chitchat-max-conversations',
                '8',
            ]
        )
    assert code == 0
    with open(out / 'report.json') as fh:
        report = json.load(fh)
    rows = {row['label']: row for row in report['models']}
    assert list(rows) == ['blender_replica', 'narrow_400M_recipe', 'wide_1B_recipe']
    teacher = rows['blender_replica']
    for label in ('narrow_400M_recipe', 'wide_1B_recipe'):
        row = rows[label]
        assert row['params'] < teacher['params']
        for decoding in ('greedy', 'beam'):
            figures = row['generation'][decoding]
            assert 0 <= figures['f1'] <= 1 and figures['mean_s_per_reply'] > 0
    # The wide student keeps the teacher's width and drops 4 of 8 decoder layers.
    assert rows['wide_1B_recipe']['architecture']['embedding_size'] == 32
    assert rows['narrow_400M_recipe']['architecture']['embedding_size'] == 16
    assert (out / 'report.md').is_file() and (out / 'quality_vs_speed.png').is_file()
