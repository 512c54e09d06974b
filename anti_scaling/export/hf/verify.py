"""Check an exported folder against the ParlAI model it came from.

On the first ``examples`` labelled examples of a ParlAI task (by default the
offline ``anti_scaling.tasks.chitchat`` test split), with contexts built by
ParlAI's own agent as in ``parlai eval_model``:

1. ``parlai_inputs.py`` rebuilds each context's token ids from the raw turns
   (with the exported tokenizer) and the label's ids: equal to ParlAI's;
2. on ParlAI's token ids, the logits of transformers and ParlAI under teacher
   forcing agree within ``tolerance`` (largest absolute difference over every
   label position and vocabulary entry);
3. greedy replies, ParlAI's search (``--inference greedy``, the model's n-gram
   blocking) against ``generate`` with the exported ``generation_config``, are
   identical token for token, and their texts equal (where ParlAI can decode them).

The cases and ParlAI's replies come from :mod:`..cases`, shared with the
CTranslate2 export. The checks fail loudly: :func:`verify_export` raises :class:`DistillationError`
naming every failing check.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch

from ...errors import DistillationError
from ...report.evaluation import batches
from ..cases import DEFAULT_TASK, Case, parlai_greedy, parlai_text, task_cases
from .families import Family

TOLERANCE = 1e-4


def _pad(rows: Sequence[Sequence[int]], pad: int) -> torch.Tensor:
    out = torch.full((len(rows), max(len(r) for r in rows)), pad, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.as_tensor(list(row), dtype=torch.long)
    return out


def max_logit_difference(
    agent: Any, model: Any, family: Family, cases: list[Case]
) -> float:
    """Largest |ParlAI - transformers| logit over the label positions of ``cases``."""
    d = agent.dict
    pad, start, end = d[d.null_token], d[d.start_token], d[d.end_token]
    prefix = [end, start] if family.decoder_prefix == 2 else [start]
    worst = 0.0
    for chunk in batches(cases, 10):
        xs = _pad([c.observation['text_vec'].tolist() for c in chunk], pad)
        labels = [c.observation['eval_labels_vec'].tolist() for c in chunk]
        ys = _pad(labels, pad)
        decoder_input = _pad([prefix + y[:-1] for y in labels], pad)
        with torch.no_grad():
            ours = agent.model(xs, ys=ys)[0]
            theirs = model(
                input_ids=xs,
                attention_mask=(xs != pad).long(),
                decoder_input_ids=decoder_input,
            ).logits[:, len(prefix) - 1 :]
        for i, y in enumerate(labels):
            diff = (ours[i, : len(y)] - theirs[i, : len(y)]).abs().max().item()
            worst = max(worst, diff)
    return worst


def hf_greedy(
    model: Any, inputs: Any, cases: list[Case], family: Family
) -> list[list[int]]:
    """transformers' greedy outputs for the same conversations (whole sequences)."""
    rows = []
    for chunk in batches(cases, 10):
        kwargs = inputs.generate_kwargs([c.turns for c in chunk])
        with torch.no_grad():
            out = model.generate(
                **kwargs, num_beams=1, do_sample=False, min_length=family.decoder_prefix
            )
        rows += out.tolist()
    return rows


def reply_tokens(row: list[int], prefix: int, end: int) -> list[int]:
    """The generated tokens of a transformers output row, end token included."""
    row = row[prefix:]
    return row[: row.index(end) + 1] if end in row else row


def load_helper(folder: str) -> Any:
    """The ``parlai_inputs.py`` shipped in ``folder``, imported from that very file."""
    import importlib.util

    path = os.path.join(folder, 'parlai_inputs.py')
    spec = importlib.util.spec_from_file_location('_exported_parlai_inputs', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def verify_export(
    agent: Any,
    folder: str,
    family: Family,
    datapath: str,
    task: str = DEFAULT_TASK,
    examples: int = 50,
    datatype: str = 'test',
    task_args: Sequence[str] = (),
    tolerance: float = TOLERANCE,
) -> dict[str, Any]:
    """Run the three checks (module doc) on ``folder``; their figures.

    Raises :class:`DistillationError` (one line) when a check fails or the
    task gives no example.
    """
    from transformers import AutoModelForSeq2SeqLM

    model = AutoModelForSeq2SeqLM.from_pretrained(folder).eval()
    inputs = load_helper(folder).ParlaiInputs.from_pretrained(folder)
    cases = task_cases(agent, task, datatype, datapath, examples, task_args)
    if not cases:
        raise DistillationError(f'verification: -t {task} ({datatype}) gave no example')
    context_equal = sum(
        inputs.context_ids(c.turns) == c.observation['text_vec'].tolist() for c in cases
    )
    label_equal = sum(
        inputs.label_ids(c.label) == c.observation['eval_labels_vec'].tolist()
        for c in cases
    )
    worst = max_logit_difference(agent, model, family, cases)
    ours, rows = parlai_greedy(agent, cases), hf_greedy(model, inputs, cases, family)
    end = inputs.settings['end_id']
    theirs = [reply_tokens(row, family.decoder_prefix, end) for row in rows]
    identical = sum(a == b for a, b in zip(ours, theirs))
    pairs = [
        (parlai_text(agent, a), inputs.reply_text(row)) for a, row in zip(ours, rows)
    ]
    compared = [(a, b) for a, b in pairs if a is not None]
    texts = sum(a == b for a, b in compared)
    report = {
        'task': task,
        'datatype': datatype,
        'examples': len(cases),
        'context_ids_equal': context_equal,
        'label_ids_equal': label_equal,
        'max_abs_logit_diff': worst,
        'tolerance': tolerance,
        'greedy_identical': identical,
        'greedy_texts_equal': texts,
        'greedy_texts_compared': len(compared),
        'distinct_replies': len({tuple(r) for r in ours}),
        'mean_reply_tokens': sum(len(r) for r in ours) / len(ours),
    }
    failures = [
        (context_equal < len(cases), 'context ids'),
        (label_equal < len(cases), 'label ids'),
        (not worst <= tolerance, f'logits (largest difference {worst:.2e})'),
        (identical < len(cases), 'greedy replies'),
        (texts < len(compared), 'reply texts'),
    ]
    failed = [name for bad, name in failures if bad]
    if failed:
        raise DistillationError(
            f'verification failed: {", ".join(failed)} differ from ParlAI '
            f'({report}); nothing was written'
        )
    return report
