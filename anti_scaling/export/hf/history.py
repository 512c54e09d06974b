"""The settings :mod:`.parlai_inputs` needs to build a model's input as ParlAI does."""

from __future__ import annotations

from typing import Any

from .families import Family


def input_settings(agent: Any, family: Family) -> dict[str, Any]:
    """``parlai_inputs.json``: the history options and special ids of a loaded agent.

    Truncation lengths are the agent's resolved ones (``--text-truncate`` or
    ``--truncate``; ``None`` for none).
    """
    opt, d = agent.opt, agent.dict
    bpe = getattr(d, 'bpe', None)
    return {
        'delimiter': opt.get('delimiter', '\n'),
        'history_size': opt.get('history_size', -1),
        'history_add_global_end_token': bool(opt.get('history_add_global_end_token')),
        'history_reversed': bool(opt.get('history_reversed', False)),
        'person_tokens': bool(opt.get('person_tokens', False)),
        'add_p1_after_newln': bool(opt.get('add_p1_after_newln', False)),
        'split_lines': bool(opt.get('split_lines', False)),
        'use_reply': opt.get('use_reply', 'label'),
        'p1_token': agent.P1_TOKEN,
        'p2_token': agent.P2_TOKEN,
        'text_truncate': agent.text_truncate,
        'context_block_ngram': int(opt.get('beam_context_block_ngram', -1) or -1),
        'block_full_context': bool(opt.get('beam_block_full_context', True)),
        'label_truncate': agent.label_truncate,
        'add_start_end': family.decoder_prefix == 2,
        'decoder_prefix': family.decoder_prefix,
        'strip_prefix_space': bool(bpe is not None and bpe.add_prefix_space),
        'pad_id': d[d.null_token],
        'start_id': d[d.start_token],
        'end_id': d[d.end_token],
        'unk_id': d[d.unk_token],
        # What the dictionary was (read back by the import script).
        'dictionary': {
            key: opt.get(key)
            for key in (
                'dict_tokenizer',
                'dict_lower',
                'dict_nulltoken',
                'dict_starttoken',
                'dict_endtoken',
                'dict_unktoken',
                'bpe_add_prefix_space',
                'special_tok_lst',
            )
        },
    }
