"""The ``README.md`` of an exported folder: what it is, how to feed it, what was checked."""

from __future__ import annotations

import json
import os
from typing import Any

from .families import Family


def _input_recipe(s: dict[str, Any]) -> list[str]:
    """ParlAI's input recipe for these settings, as numbered Markdown steps."""
    first = "Each turn is tokenized on its own; the last turn is the partner's"
    if s['use_reply'] == 'none':
        first += " and the model's own turns are left out (`use_reply none`)"
    else:
        first += ' and turns alternate before it'
    steps = [first + '.']
    if s['person_tokens']:
        steps.append(
            f"The partner's turns start with `{s['p1_token']} `, the model's own "
            f"with `{s['p2_token']} `."
        )
    if s['split_lines']:
        steps.append("The partner's turns are split at newlines into separate turns.")
    size = s['history_size']
    if size and size > 0:
        steps.append(f'Only the last {size} turns are kept.')
    steps.append(
        f"The turns are joined with the delimiter {json.dumps(s['delimiter'])} "
        '(tokenized once, on its own).'
    )
    if s['history_add_global_end_token']:
        steps.append(f"The end token (id {s['end_id']}) is appended.")
    if s['history_reversed']:
        steps.append('The token list is reversed.')
    truncate = s['text_truncate']
    side = 'first' if s['history_reversed'] else 'last'
    if s['add_start_end']:
        kept = f'The {side} {truncate - 2} tokens are kept and w' if truncate else 'W'
        steps.append(
            f"{kept}rapped in the start (id {s['start_id']}) and end (id "
            f"{s['end_id']}) tokens, as ParlAI's `bart` agent does."
        )
    elif truncate:
        steps.append(f'The {side} {truncate} tokens are kept.')
    steps.append(
        'Batches are padded on the right: encoder positions count from the first '
        "token, which matches ParlAI's (counted from the first real token) only "
        'for right padding.'
    )
    return [f'{i}. {step}' for i, step in enumerate(steps, 1)]


def _verification(report: dict[str, Any] | None) -> list[str]:
    if report is None:
        return [
            'Not verified at export (run the export with `--verify` to compare '
            'with ParlAI).'
        ]
    return [
        f"Checked against ParlAI on {report['examples']} examples of "
        f"`{report['task']}` ({report['datatype']}), see `verification.json`:",
        '',
        f"- context ids built by `parlai_inputs.py` equal ParlAI's: "
        f"{report['context_ids_equal']}/{report['examples']};",
        f"- label ids equal: {report['label_ids_equal']}/{report['examples']};",
        f"- largest logit difference on the same token ids: "
        f"{report['max_abs_logit_diff']:.2e} (tolerance {report['tolerance']:.0e});",
        f"- greedy replies identical token for token: "
        f"{report['greedy_identical']}/{report['examples']} "
        f"({report['distinct_replies']} distinct replies); texts equal: "
        f"{report['greedy_texts_equal']}/{report['greedy_texts_compared']} that "
        'ParlAI could decode.',
    ]


def _blocking(generation: Any, s: dict[str, Any]) -> list[str]:
    rules = []
    if generation.no_repeat_ngram_size:
        rules.append(
            f'no {generation.no_repeat_ngram_size}-gram repeated within a reply '
            '(`no_repeat_ngram_size`)'
        )
    n = s['context_block_ngram']
    if n > 0 and s['block_full_context']:
        rules.append(
            f"no {n}-gram of the whole history (ParlAI's `--beam-block-full-context`): "
            "`inputs.generate_kwargs` adds this logits processor, since transformers' "
            '`encoder_no_repeat_ngram_size` sees only the truncated input'
        )
    elif n > 0:
        rules.append(f'no {n}-gram of the input (`encoder_no_repeat_ngram_size`)')
    return rules


def _decoding(family: Family, generation: Any, s: dict[str, Any]) -> list[str]:
    prefix = family.decoder_prefix
    seed = '[end, start]' if prefix == 2 else '[start]'
    search = (
        f'beam search of {generation.num_beams}'
        if generation.num_beams > 1
        else 'greedy search'
    )
    first = (
        f"`generation_config.json` holds ParlAI's settings: {search}, replies of at "
        f'most {generation.max_length - prefix} tokens (`max_length` '
        f"{generation.max_length} counts the decoder's first tokens {seed}, which "
        'ParlAI does not count); a reply that reaches the limit ends with the end '
        'token, as in ParlAI (`forced_eos_token_id`)'
    )
    rules = _blocking(generation, s)
    start = (
        "ParlAI's `transformer/generator` never emits its start token: "
        '`final_logits_bias` holds -1e20 at its id, as ParlAI sets that logit.'
        if family.masks_start
        else 'ParlAI seeds the decoder with [end, start]: the start token is forced '
        'as the first generated token (`forced_bos_token_id`).'
    )
    return [
        first + ''.join(f'; {rule}' for rule in rules) + '.',
        '',
        start + ' Beam search in transformers divides scores by `length ** '
        'length_penalty`, ParlAI by `((5 + length) / 6) ** alpha`: beam replies may '
        'differ; greedy replies are the same.',
    ]


def folder_readme(
    model_file: str,
    family: Family,
    config: Any,
    generation: Any,
    settings: dict[str, Any],
    report: dict[str, Any] | None,
    int8: bool,
) -> str:
    """The README text of an export of ``model_file``."""
    name = os.path.basename(os.path.dirname(os.path.abspath(model_file)))
    lines = [
        f'# {name}: a ParlAI model for transformers',
        '',
        f'Exported by `anti_scaling` from the ParlAI model `{model_file}` '
        f'(`-m {family.parlai_model} --variant {family.variant}`) as '
        f'`{family.architecture}`: {config.encoder_layers} encoder and '
        f'{config.decoder_layers} decoder layers, width {config.d_model}, FFN '
        f'{config.encoder_ffn_dim}, {config.encoder_attention_heads} heads, '
        f'{config.vocab_size} tokens, {config.max_position_embeddings} positions.',
        '',
        '## Use',
        '',
        '```python',
        'import sys',
        'from transformers import AutoModelForSeq2SeqLM',
        "sys.path.insert(0, 'THIS_FOLDER')",
        'from parlai_inputs import ParlaiInputs',
        '',
        "model = AutoModelForSeq2SeqLM.from_pretrained('THIS_FOLDER')",
        "inputs = ParlaiInputs.from_pretrained('THIS_FOLDER')  # loads the tokenizer",
        "conversation = ['hi!', 'hello, how are you?', 'fine, thanks. and you?']",
        '# ParlAI\'s decoding: generation_config.json, plus its context blocking',
        'reply = model.generate(**inputs.generate_kwargs([conversation]))',
        'print(inputs.reply_text(reply[0]))',
        '```',
        '',
        '`AutoTokenizer.from_pretrained` loads the tokenizer alone; on one text it '
        'gives the ids ParlAI gives a one-turn history (`truncation=True` keeps the '
        'last tokens).',
        '',
        '## How ParlAI builds the input (reproduced by `parlai_inputs.py`)',
        '',
        *_input_recipe(settings),
        '',
        '## Decoding',
        '',
        *_decoding(family, generation, settings),
        '',
        '## Verification',
        '',
        *_verification(report),
    ]
    if int8:
        lines += [
            '',
            '## int8 copy',
            '',
            '`int8/model_int8.pt`: the same model with every encoder and decoder '
            'linear layer dynamically quantised to int8 (torch '
            '`quantize_dynamic`; embeddings, LayerNorms and the output layer stay '
            'float32). Load it with `parlai_inputs.load_int8(\'THIS_FOLDER\')`. It '
            'runs on CPUs only.',
        ]
    lines.append('')
    return '\n'.join(lines)
