"""``generation_config.json``: ParlAI's decoding options in transformers' terms.

transformers counts the decoder's first tokens in ``max_length``/``min_length``
(``[start]``, or ``[end, start]`` for BART, whose start is forced with
``forced_bos_token_id``); ParlAI counts generated tokens only. So ParlAI's limit
of ``--label-truncate`` (else 256) generated tokens is ``max_length = limit +
prefix``; its ``--beam-min-length m`` (used by beam search, not greedy search)
is ``min_length = m + prefix``. ``--beam-block-ngram`` and
``--beam-context-block-ngram`` are ``no_repeat_ngram_size`` and
``encoder_no_repeat_ngram_size``. When a reply reaches the limit without an
end token, ParlAI's search replaces its last token with the end token:
``forced_eos_token_id`` does the same.

Not carried (no transformers equivalent): ParlAI's beam length penalty
``((5 + len) / 6) ** alpha`` (transformers divides by ``len ** alpha``), and the
delayed and delayed-nucleus beam searches (exported as plain beam search).
"""

from __future__ import annotations

from typing import Any

from .families import Family

#: ParlAI's reply limit when ``--label-truncate`` is unset.
DEFAULT_MAX_REPLY = 256


def generation_config(agent: Any, family: Family) -> dict[str, Any]:
    """The ``generation_config.json`` fields of a loaded ParlAI generator agent."""
    opt, d = agent.opt, agent.dict
    prefix = family.decoder_prefix
    start, end, pad = d[d.start_token], d[d.end_token], d[d.null_token]
    inference = opt.get('inference', 'greedy')
    beam = int(opt.get('beam_size', 1) or 1)
    config: dict[str, Any] = {
        'bos_token_id': start,
        'eos_token_id': end,
        'pad_token_id': pad,
        'decoder_start_token_id': end if prefix == 2 else start,
        'forced_eos_token_id': end,
        'max_length': (agent.label_truncate or DEFAULT_MAX_REPLY) + prefix,
        'min_length': prefix,
        'num_beams': 1,
        'do_sample': False,
        'no_repeat_ngram_size': max(int(opt.get('beam_block_ngram', -1) or 0), 0),
        'encoder_no_repeat_ngram_size': max(
            int(opt.get('beam_context_block_ngram', -1) or 0), 0
        ),
    }
    if prefix == 2:
        config['forced_bos_token_id'] = start
    if inference in ('beam', 'delayedbeam', 'delayednucleusbeam') and beam > 1:
        config['num_beams'] = beam
        config['min_length'] = int(opt.get('beam_min_length', 1) or 0) + prefix
    elif inference in ('topk', 'nucleus'):
        config['do_sample'] = True
        config['num_beams'] = beam
        config['min_length'] = int(opt.get('beam_min_length', 1) or 0) + prefix
        config['temperature'] = float(opt.get('temperature', 1.0))
        if inference == 'topk':
            config['top_k'] = int(opt.get('topk', 10))
        else:
            config['top_k'] = 0
            config['top_p'] = float(opt.get('topp', 0.9))
    return config
