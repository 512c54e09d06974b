"""``make demo``: a real distillation, end to end, offline, in a few minutes on a CPU.

1. trains a small ``transformer/generator`` teacher on real conversations
   (``-t anti_scaling.tasks.chitchat``, data shipped inside the ``chitchat-dataset``
   wheel);
2. distils it into a wide student (``DistillTransformerAgent``: fewer decoder
   layers, initialised from the teacher) and a narrow one
   (``DistillNarrowTransformerAgent``: half the width, every loss term);
3. strips the narrow student's projection matrices;
4. evaluates the teacher and both students as plain ``transformer/generator``
   models and prints one table: parameters, perplexity, token accuracy,
   generation time and speedup; with the ``serve`` extra, also the narrow
   student exported to CTranslate2 (float32, one thread) and timed alike.

Everything is written under ``--out`` (default ``runs/demo``, replaced on each
run; a folder the demo did not write is refused, never deleted). The training
budgets are short, so the models are weak; the point is the whole path and the
trade-off the table shows.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import os
import shutil
import statistics
import sys
import time
from typing import Any

import torch

from ..errors import DistillationError
from ..report.models import count_parameters
from . import command_line

TASK = 'anti_scaling.tasks.chitchat'
#: Replies generated before timing starts.
WARMUP_REPLIES = 2
#: The file that marks ``--out`` as the demo's own folder (safe to replace).
MARKER = '.anti_scaling_demo'
DATA = {
    'chitchat_max_conversations': 1500,
    'history_size': 2,
    'text_truncate': 48,
    'label_truncate': 20,
}
REPLY_TOKENS = DATA['label_truncate']
TEACHER_SHAPE = {
    'n_encoder_layers': 2,
    'n_decoder_layers': 4,
    'embedding_size': 128,
    'ffn_size': 512,
    'n_heads': 4,
    # Pre-LayerNorm leaves the unigram plateau far sooner than ParlAI's default
    # post-LN ('aiayn'), which matters with a one-minute budget.
    'variant': 'prelayernorm',
    'activation': 'gelu',
    'dropout': 0.0,
}
TRAINING = {
    'task': TASK,
    'batchsize': 48,
    'optimizer': 'adam',
    'lr_scheduler': 'none',
    'skip_generation': True,
    'validation_every_n_epochs': -1,
    'validation_max_exs': 64,
    'short_final_eval': True,
    'log_every_n_secs': 20,
    # ParlAI warns about every option a loaded model overrides: noise in a demo.
    'loglevel': 'error',
    **DATA,
}
NARROW_COEFFS = {
    'task_loss_coeff': 1.0,
    'encoder_loss_coeff': 1.0,
    'hidden_loss_coeff': 1.0,
    'embedding_loss_coeff': 1.0,
    'self_attn_loss_coeff': 0.05,
    'enc_dec_attn_loss_coeff': 0.05,
    'pred_loss_coeff': 1.0,
}
WIDE_COEFFS = {'task_loss_coeff': 1.0, 'hidden_loss_coeff': 1.0, 'pred_loss_coeff': 1.0}


def _step(message: str) -> float:
    print(f'\n== {message}', flush=True)
    return time.perf_counter()


def _done(start: float, extra: str = '') -> None:
    print(f'   done in {time.perf_counter() - start:.0f} s {extra}', flush=True)


def build_dictionary(out: str, datapath: str) -> str:
    from parlai.scripts.build_dict import BuildDict

    dict_file = os.path.join(out, 'chitchat.dict')
    BuildDict.main(
        task=TASK,
        dict_file=dict_file,
        dict_tokenizer='re',
        dict_lower=True,
        dict_maxtokens=3000,
        datapath=datapath,
        loglevel='error',
        **{k: v for k, v in DATA.items() if k.startswith('chitchat')},
    )
    return dict_file


def train(title: str, datapath: str, seconds: float, **options: Any) -> None:
    """Say what trains, train it for ``seconds``, say its validation perplexity."""
    from parlai.scripts.train_model import TrainModel

    start = _step(title)
    valid, _ = TrainModel.main(
        **TRAINING, datapath=datapath, max_train_time=seconds, **options
    )
    _done(start, f"(valid ppl {float(valid['ppl']):.1f})")


def evaluate(model_file: str, datapath: str, examples: int) -> dict[str, float]:
    """Perplexity and token accuracy under teacher forcing on the valid split."""
    from parlai.scripts.eval_model import EvalModel

    # eval_model prints its report; the demo prints its own table.
    with contextlib.redirect_stdout(io.StringIO()):
        report = EvalModel.main(
            task=TASK,
            model='transformer/generator',
            model_file=model_file,
            datapath=datapath,
            datatype='valid',
            skip_generation=True,
            num_examples=examples,
            batchsize=32,
            loglevel='error',
            **DATA,
        )
    return {'ppl': float(report['ppl']), 'token_acc': float(report['token_acc'])}


def opening_turns(datapath: str, count: int) -> list[str]:
    """The first context of ``count`` valid episodes: the same inputs for every model."""
    from parlai.core.params import ParlaiParser
    from parlai.core.teachers import create_task_agent_from_taskname

    opt = ParlaiParser(True, False).parse_args(
        ['-t', TASK, '-dt', 'valid', '-dp', datapath]
    )
    teacher = create_task_agent_from_taskname(opt)[0]
    texts = []
    while len(texts) < count and not teacher.epoch_done():
        message = teacher.act()
        if message.get('text') and len(texts) < count:
            texts.append(message['text'])
        while not message.get('episode_done') and not teacher.epoch_done():
            message = teacher.act()
    return texts


def load_for_generation(model_file: str, datapath: str) -> Any:
    """The model as a plain ``transformer/generator`` that decodes as timed below."""
    from parlai.core.agents import create_agent_from_model_file

    return create_agent_from_model_file(
        model_file,
        {
            'model': 'transformer/generator',
            'datapath': datapath,
            'skip_generation': False,
            'inference': 'beam',
            'beam_size': 1,
            'beam_min_length': REPLY_TOKENS,
            **DATA,
        },
    )


def generation_seconds(agent: Any, texts: list[str]) -> float:
    """Mean seconds per reply of exactly ``REPLY_TOKENS`` tokens.

    Decoding (:func:`load_for_generation`) is greedy (beam size 1) with the
    minimum length set to the maximum, so every model generates the same number
    of tokens and the times compare compute, not reply lengths. Batch size 1;
    the first ``WARMUP_REPLIES`` replies excluded.
    """
    from parlai.core.message import Message

    times = []
    for i, text in enumerate(texts):
        agent.reset()
        agent.observe(Message({'text': text, 'episode_done': True}))
        start = time.perf_counter()
        agent.act()
        if i >= WARMUP_REPLIES:
            times.append(time.perf_counter() - start)
    return statistics.mean(times)


def ct2_rows(
    model_file: str, datapath: str, texts: list[str], examples: int, params: int
) -> list[dict[str, Any]]:
    """The narrow student served by CTranslate2 (float32, one thread), timed as
    ParlAI is above; none without the ``serve`` extra (one line says so)."""
    try:
        import ctranslate2  # noqa: F401
    except ImportError:
        print("   (CTranslate2 row skipped: pip install -e '.[serve]')")
        return []
    from ..export.cases import parlai_label_log_probs, task_cases
    from ..export.ct2.to_ct2 import export_to_ct2
    from ..export.parlai_model import load_for_export
    from ..serving.speed import ct2_engine, engine_quality, reply_seconds

    folder = model_file + '-ct2'
    export_to_ct2(model_file, folder, datapath, overwrite=True)
    engine = ct2_engine(folder, 1, REPLY_TOKENS)
    engine.generation['greedy_min_length'] = REPLY_TOKENS
    agent, _ = load_for_export(model_file, datapath)
    task_args = [
        '--chitchat-max-conversations',
        str(DATA['chitchat_max_conversations']),
    ]
    cases = task_cases(agent, TASK, 'valid', datapath, examples, task_args)
    row = {'name': 'narrow student, CTranslate2 float32 (*)', 'params': params}
    row.update(engine_quality(engine, cases))
    row['seconds'] = reply_seconds(engine, texts, WARMUP_REPLIES)
    # The cases are the first valid examples in order; ParlAI's batched
    # evaluation above takes others (a few from each of 32 episodes at a time).
    scores = parlai_label_log_probs(agent, cases)
    parlai_ppl = math.exp(-sum(map(sum, scores)) / sum(map(len, scores)))
    row['note'] = (
        f'(*) perplexity and token accuracy on the first {len(cases)} valid '
        'examples in order, where ParlAI itself gives the same model a perplexity '
        f'of {parlai_ppl:.1f} (the rows above: ParlAI\'s batched evaluation, '
        'other examples)'
    )
    return [row]


def print_table(rows: list[dict[str, Any]]) -> None:
    teacher_time = rows[0]['seconds']
    header = (
        f"{'model':<38} {'params':>9} {'ppl':>8} {'token acc':>9} "
        f"{'s/reply':>8} {'speedup':>8}"
    )
    print('\n' + header)
    print('-' * len(header))
    for row in rows:
        print(
            f"{row['name']:<38} {row['params']:>9,} {row['ppl']:>8.1f} "
            f"{row['token_acc']:>9.3f} {row['seconds']:>8.4f} "
            f"{teacher_time / row['seconds']:>7.2f}x"
        )
    for row in rows:
        if row.get('note'):
            print(row['note'])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--out', default='runs/demo')
    parser.add_argument(
        '--minutes',
        type=float,
        default=1.0,
        help='training budget of the teacher; each student gets half of it',
    )
    parser.add_argument('--eval-examples', type=int, default=256)
    parser.add_argument('--generation-examples', type=int, default=50)
    args = parser.parse_args(argv)
    out = os.path.abspath(args.out)
    return command_line.exit_status(lambda: run_demo(args, out))


def check_demo_args(args: argparse.Namespace, out: str) -> None:
    """One line for bad input, before anything is trained or deleted."""
    if args.minutes <= 0:
        raise DistillationError(f'--minutes {args.minutes}: give a positive budget')
    if args.eval_examples < 1:
        raise DistillationError(
            f'--eval-examples {args.eval_examples}: give at least 1'
        )
    if args.generation_examples <= WARMUP_REPLIES:
        raise DistillationError(
            f'--generation-examples {args.generation_examples}: give more than '
            f'{WARMUP_REPLIES} (the first {WARMUP_REPLIES} replies warm up, untimed)'
        )
    if os.path.exists(out) and not os.path.exists(os.path.join(out, MARKER)):
        raise DistillationError(
            f'--out {out} exists and was not written by the demo: choose another '
            'folder or remove it yourself'
        )


def run_demo(args: argparse.Namespace, out: str) -> int:
    check_demo_args(args, out)
    torch.manual_seed(0)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    if os.path.isdir(out):
        shutil.rmtree(out)
    os.makedirs(out)
    with open(os.path.join(out, MARKER), 'w') as fh:
        fh.write(
            'written by python -m anti_scaling.scripts.demo; replaced on each run\n'
        )
    datapath = os.path.join(out, 'parlai_data')
    teacher = os.path.join(out, 'teacher', 'model')
    wide = os.path.join(out, 'wide', 'model')
    narrow = os.path.join(out, 'narrow', 'model')
    budget = 60 * args.minutes
    begin = time.perf_counter()

    t = _step('building the dictionary from the chitchat conversations')
    dict_file = build_dictionary(out, datapath)
    _done(t)

    train(
        f'training the teacher: transformer/generator {TEACHER_SHAPE} '
        f'for {budget:.0f} s',
        datapath,
        budget,
        model='transformer/generator',
        model_file=teacher,
        dict_file=dict_file,
        learningrate=2e-3,
        **TEACHER_SHAPE,
    )

    train(
        'distilling a wide student: DistillTransformerAgent, 1 decoder layer of 4 '
        f'(initialised from teacher layer 3), for {budget / 2:.0f} s',
        datapath,
        budget / 2,
        model='anti_scaling.distillation:DistillTransformerAgent',
        teacher_model=teacher,
        model_file=wide,
        n_decoder_layers=1,
        learningrate=1e-3,
        **WIDE_COEFFS,
    )

    train(
        'distilling a narrow student: DistillNarrowTransformerAgent, width 64, '
        f'1+2 layers, every loss term, for {budget / 2:.0f} s',
        datapath,
        budget / 2,
        model='anti_scaling.distillation:DistillNarrowTransformerAgent',
        teacher_model=teacher,
        model_file=narrow,
        n_encoder_layers=1,
        n_decoder_layers=2,
        embedding_size=64,
        ffn_size=256,
        learningrate=2e-3,
        **NARROW_COEFFS,
    )

    t = _step('stripping the narrow student of its projection matrices')
    from ..export.strip import remove_projection_matrices

    result = remove_projection_matrices(narrow)
    _done(t, f'({len(result.removed)} tensors removed; loads with -m {result.model})')

    t = _step(
        f'evaluating every model as a plain transformer/generator '
        f'({args.eval_examples} valid examples; greedy replies of {REPLY_TOKENS} '
        f'tokens to {args.generation_examples} opening turns, batch size 1)'
    )
    texts = opening_turns(datapath, args.generation_examples)
    rows = []
    for name, model_file in [
        ('teacher (2+4 layers, width 128)', teacher),
        ('wide student (2+1 layers, width 128)', wide),
        ('narrow student (1+2 layers, width 64)', narrow),
    ]:
        agent = load_for_generation(model_file, datapath)
        row = {'name': name, 'params': count_parameters(agent.model)}
        row.update(evaluate(model_file, datapath, args.eval_examples))
        row['seconds'] = generation_seconds(agent, texts)
        rows.append(row)
    rows += ct2_rows(narrow, datapath, texts, args.eval_examples, rows[-1]['params'])
    _done(t)

    print_table(rows)
    print(
        f'\nTotal {time.perf_counter() - begin:.0f} s. Models are in {out}; e.g.\n'
        f'  parlai interactive -m transformer/generator -mf {narrow} -dp {datapath}'
    )
    return 0


if __name__ == '__main__':
    sys.exit(main())
