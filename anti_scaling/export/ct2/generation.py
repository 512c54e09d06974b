"""ParlAI's decoding options in CTranslate2's terms (``ct2_generation.json``).

ParlAI counts generated tokens, end token included: ``--label-truncate`` (else
256) is ``max_decoding_length``, and a reply that reaches it without an end
token gets its last token replaced by the end token (done after decoding by
:mod:`.engine`, as ParlAI's search does). Greedy search has no minimum length in
ParlAI; beam search has ``--beam-min-length`` (``min_decoding_length``).
``--beam-block-ngram`` is ``no_repeat_ngram_size``. ``--beam-context-block-ngram``
has no option of its own: :mod:`.engine` passes the context's n-grams as
``suppress_sequences``, which CTranslate2 applies to a whole call, so histories
are then decoded one per call (still in parallel across ``inter_threads``).

Beam search: ParlAI fills its beam from all candidates, finished ones
included, stops when the best candidate of a step ends, and ranks finished
replies by ``score / ((2 + reply tokens) / 6) ** penalty`` (GNMT, end token
counted); CTranslate2's own beam search keeps ``beam`` live hypotheses and gives
other replies on some contexts. The engine uses CTranslate2's (fast) unless
told to replay ParlAI's step by step (:mod:`.beam`, ``exact_beam``: ParlAI's
replies, several times slower).
Not expressed (stated in the folder's README): sampling (``topk``, ``nucleus``)
and the delayed beam searches are exported as greedy and plain beam search.
"""

from __future__ import annotations

from typing import Any

from ..hf.generation import DEFAULT_MAX_REPLY

#: File of these settings in an exported folder.
GENERATION_FILE = 'ct2_generation.json'
BEAM_SEARCHES = ('beam', 'delayedbeam', 'delayednucleusbeam')


def generation_settings(agent: Any) -> dict[str, Any]:
    """The decoding settings of a loaded ParlAI generator agent."""
    opt = agent.opt
    inference = opt.get('inference', 'greedy')
    beam = int(opt.get('beam_size', 1) or 1)
    return {
        'beam_size': beam if inference in BEAM_SEARCHES else 1,
        'beam_min_length': int(opt.get('beam_min_length', 1) or 0),
        'max_length': agent.label_truncate or DEFAULT_MAX_REPLY,
        'block_ngram': max(int(opt.get('beam_block_ngram', -1) or 0), 0),
        'context_block_ngram': max(
            int(opt.get('beam_context_block_ngram', -1) or 0), 0
        ),
        'block_full_context': bool(opt.get('beam_block_full_context', True)),
        'length_penalty': float(opt.get('beam_length_penalty', 0.65)),
        'parlai_inference': inference,
    }


def not_expressed(settings: dict[str, Any]) -> list[str]:
    """What CTranslate2 cannot do exactly for these settings, one sentence each."""
    notes = [
        "Beam search: CTranslate2's own beam search keeps `beam` live hypotheses "
        "where ParlAI's fills its beam from all candidates, finished ones "
        "included, so beam replies can differ from ParlAI's on some contexts. "
        "`--exact-beam` (`Replier(..., exact_beam=True)`) replays ParlAI's "
        "search step by step on CTranslate2's logits: ParlAI's replies, several "
        "times slower."
    ]
    if settings['parlai_inference'] not in ('greedy', *BEAM_SEARCHES):
        notes.append(
            f"--inference {settings['parlai_inference']} (sampling) is not "
            'exported: replies are greedy or beam search.'
        )
    if settings['parlai_inference'] in BEAM_SEARCHES[1:]:
        notes.append(
            f"--inference {settings['parlai_inference']} is exported as plain "
            'beam search.'
        )
    if settings['context_block_ngram']:
        notes.append(
            f"Context n-gram blocking ({settings['context_block_ngram']}) is "
            'passed per history (`suppress_sequences`), so histories are decoded '
            'one per engine call rather than in one batch.'
        )
    return notes
