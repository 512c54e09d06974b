"""Check a CTranslate2 folder against the ParlAI model it came from.

On the verification cases of :mod:`anti_scaling.export.cases` (by default 50
contexts of the offline chitchat test split), with a float32 copy of the model:

1. the folder's tokenizer and history settings rebuild ParlAI's context and
   label ids from the raw turns;
2. greedy replies, and beam replies (the model's beam size, else 4; ParlAI's
   beam search replayed by :mod:`.beam`), are ParlAI's token for token; the
   agreement of CTranslate2's own beam search is reported too;
3. the log-probability CTranslate2 gives each reference reply token (its
   ``score_batch``) is within ``tolerance`` (1e-3) of ParlAI's.

A quantised folder is then compared with float32: the share of contexts whose
greedy reply is unchanged, and the teacher-forced token accuracy on the
references of both (the change is printed). :func:`verify_folder` raises
:class:`DistillationError` naming every failing check of 1-3.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ...errors import DistillationError
from ..cases import (
    DEFAULT_TASK,
    Case,
    parlai_label_log_probs,
    parlai_replies,
    parlai_text,
    task_cases,
)
from .engine import Engine

TOLERANCE = 1e-3
#: Beam size checked when the model itself decodes greedily.
DEFAULT_VERIFY_BEAM = 4


def token_accuracy(engine: Engine, cases: list[Case]) -> float:
    """Share of reference tokens that are the engine's argmax under teacher forcing."""
    import numpy as np

    right = total = 0
    for case in cases:
        label = case.observation['eval_labels_vec'].tolist()
        context = case.observation['text_vec'].tolist()
        prefix = ([engine.vocab[engine.start_id]] if engine.prefix else []) + (
            engine.tokens(label[:-1])
        )
        result = engine.translator.translate_batch(
            [engine.tokens(context)],
            [prefix],
            beam_size=1,
            max_decoding_length=len(prefix) + 1,
            min_decoding_length=0,
            return_logits_vocab=True,
            max_input_length=0,
        )[0]
        steps = result.logits[0][len(prefix) - len(label) + 1 :]
        for step, token in zip(steps, label):
            right += int(np.asarray(step).argmax() == token)
            total += 1
    return right / max(total, 1)


def _same(a: Sequence[Sequence[int]], b: Sequence[Sequence[int]]) -> int:
    return sum(list(x) == list(y) for x, y in zip(a, b))


def verify_folder(
    agent: Any,
    float_folder: str,
    datapath: str,
    quantized_folder: str | None = None,
    task: str = DEFAULT_TASK,
    examples: int = 50,
    datatype: str = 'test',
    task_args: Sequence[str] = (),
    beam: int | None = None,
    tolerance: float = TOLERANCE,
    device: str = 'cpu',
) -> dict[str, Any]:
    """Run the checks (module doc); their figures. ``float_folder``: a float32 export.

    ``device``: where CTranslate2 runs both folders (``cpu`` or ``cuda``).
    """
    engine = Engine(float_folder, device=device)
    cases = task_cases(agent, task, datatype, datapath, examples, task_args)
    if not cases:
        raise DistillationError(f'verification: -t {task} ({datatype}) gave no example')
    n = len(cases)
    beam = beam or (
        engine.generation['beam_size']
        if engine.generation['beam_size'] > 1
        else DEFAULT_VERIFY_BEAM
    )
    contexts = [c.observation['text_vec'].tolist() for c in cases]
    labels = [c.observation['eval_labels_vec'].tolist() for c in cases]
    context_equal = _same([engine.context_ids(c.turns) for c in cases], contexts)
    label_equal = _same([engine.inputs.label_ids(c.label) for c in cases], labels)
    histories = [c.turns for c in cases]
    greedy = parlai_replies(agent, cases, 1)
    ct2_greedy = engine.reply_ids(histories, 1)
    beamed = parlai_replies(agent, cases, beam)
    native_beam = engine.reply_ids(histories, beam)
    engine.exact_beam = True
    ct2_beam = engine.reply_ids(histories, beam)
    engine.exact_beam = False
    ours = parlai_label_log_probs(agent, cases)
    theirs = engine.score_ids(contexts, labels)
    worst = max(abs(a - b) for x, y in zip(ours, theirs) for a, b in zip(x, y))
    lengths_equal = all(len(x) == len(y) for x, y in zip(ours, theirs))
    pairs = [(parlai_text(agent, r), engine.text(r)) for r in greedy]
    texts = sum(a == b for a, b in pairs if a is not None)
    report: dict[str, Any] = {
        'task': task,
        'datatype': datatype,
        'examples': n,
        'context_ids_equal': context_equal,
        'label_ids_equal': label_equal,
        'greedy_identical': _same(greedy, ct2_greedy),
        'beam_size': beam,
        'beam_identical': _same(beamed, ct2_beam),
        'native_beam_identical': _same(beamed, native_beam),
        'greedy_texts_equal': texts,
        'max_abs_log_prob_diff': worst,
        'tolerance': tolerance,
        'distinct_replies': len({tuple(r) for r in greedy}),
        'mean_reply_tokens': sum(len(r) for r in greedy) / n,
        'token_accuracy': token_accuracy(engine, cases),
    }
    if quantized_folder is not None:
        quantized = Engine(quantized_folder, device=device)
        report['quantized_greedy_agreement'] = (
            _same(quantized.reply_ids(histories, 1), ct2_greedy) / n
        )
        report['quantized_token_accuracy'] = token_accuracy(quantized, cases)
        report['token_accuracy_change'] = (
            report['quantized_token_accuracy'] - report['token_accuracy']
        )
    failures = [
        (context_equal < n, 'context ids'),
        (label_equal < n, 'label ids'),
        (report['greedy_identical'] < n, 'greedy replies'),
        (report['beam_identical'] < n, f'beam {beam} replies'),
        (texts < sum(a is not None for a, _ in pairs), 'reply texts'),
        (not (lengths_equal and worst <= tolerance), f'log-probs ({worst:.2e})'),
    ]
    failed = [name for bad, name in failures if bad]
    if failed:
        raise DistillationError(
            f'verification failed: {", ".join(failed)} differ from ParlAI '
            f'({report}); nothing was written'
        )
    return report
