"""The ``README.md`` of a CTranslate2 folder: what it is, how to serve it, what was checked."""

from __future__ import annotations

import json
import os
from typing import Any

from ..hf.families import Family
from ..hf.parlai_inputs import SETTINGS_FILE
from ..hf.readme import _input_recipe as input_recipe
from .generation import GENERATION_FILE, not_expressed


def _verification(report: dict[str, Any] | None) -> list[str]:
    if report is None:
        return ['Not verified at export (run the export with `--verify`).']
    n = report['examples']
    lines = [
        f"Checked against ParlAI on {n} examples of `{report['task']}` "
        f"({report['datatype']}), float32, see `verification.json`:",
        '',
        f"- context ids equal ParlAI's: {report['context_ids_equal']}/{n}; "
        f"label ids: {report['label_ids_equal']}/{n};",
        f"- greedy replies identical token for token: {report['greedy_identical']}/{n}; "
        f"beam {report['beam_size']}: {report['beam_identical']}/{n} (CTranslate2's "
        f"own beam search: {report['native_beam_identical']}/{n});",
        f"- largest difference of a reference token's log-probability: "
        f"{report['max_abs_log_prob_diff']:.2e} (tolerance {report['tolerance']:.0e}).",
    ]
    if 'quantized_greedy_agreement' in report:
        lines.append(
            f"- this quantised copy: greedy replies equal float32's on "
            f"{report['quantized_greedy_agreement']:.0%} of the examples; token "
            f"accuracy {report['quantized_token_accuracy']:.4f} against "
            f"{report['token_accuracy']:.4f} in float32."
        )
    return lines


def folder_readme(
    model_file: str,
    family: Family,
    quantization: str,
    folder: str,
    report: dict[str, Any] | None,
) -> str:
    """The README text of the folder written in ``folder`` (its settings files read)."""
    with open(os.path.join(folder, SETTINGS_FILE), encoding='utf-8') as fh:
        settings = json.load(fh)
    with open(os.path.join(folder, GENERATION_FILE), encoding='utf-8') as fh:
        generation = json.load(fh)
    parts = [
        f'# {os.path.basename(os.path.dirname(os.path.abspath(model_file)))} '
        '(CTranslate2)',
        '',
        f'The ParlAI model `{model_file}` (`--variant {family.variant}`), written '
        f'for CTranslate2 with {quantization} weights by '
        '`python -m anti_scaling.scripts.export_ct2`.',
        '',
        '## Serving it',
        '',
        '```',
        'from anti_scaling.serving import Replier',
        'replier = Replier(FOLDER, threads=1)',
        "print(replier.reply(['hi there!', 'hello, how are you?', 'fine. and you?']))",
        '```',
        '',
        'or `python -m anti_scaling.scripts.chat FOLDER`, or '
        '`python -m anti_scaling.scripts.serve FOLDER --port 8080` '
        '(`POST /reply`, `GET /health`).',
        '',
        '## Input, as ParlAI built it',
        '',
        *input_recipe(settings),
        '',
        '## Decoding (`ct2_generation.json`)',
        '',
        f"Beam size {generation['beam_size']}, at most {generation['max_length']} "
        f"reply tokens, n-gram blocking {generation['block_ngram']} (reply) and "
        f"{generation['context_block_ngram']} (context); beam minimum length "
        f"{generation['beam_min_length']}, length penalty "
        f"{generation['length_penalty']}.",
        '',
        'What CTranslate2 does not express exactly:',
        '',
        *[f'- {note}' for note in not_expressed(generation)],
        '',
        '## Verification',
        '',
        *_verification(report),
        '',
    ]
    return '\n'.join(parts)
