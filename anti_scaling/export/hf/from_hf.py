"""Import a local transformers Blenderbot/BlenderbotSmall/Bart folder as a ParlAI model.

Writes ``OUT_MODEL`` (a ParlAI checkpoint), ``OUT_MODEL.opt`` (full options of
``-m transformer/generator`` or ``-m bart``) and ``OUT_MODEL.dict`` (with, for
byte-level BPE, ``OUT_MODEL.dict-vocab.json`` and ``OUT_MODEL.dict-merges.txt``):
a model our agents take as ``--teacher-model``. Nothing is downloaded (the
folder is read with ``local_files_only``). Every check runs, and every file's
contents are built, before the first file is written.

Options that transformers does not hold come from the folder's
``parlai_inputs.json`` when it has one (our exports do); otherwise: the end
token is appended to each context when the tokenizer appends it, contexts and
replies are truncated to the position table, turns are joined with ParlAI's
default delimiter ``'\\n'`` (set ``--delimiter`` when using the model if it was
trained with another).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import torch

from ...errors import DistillationError
from ...fileio import atomic_path, atomic_write
from .dictionary import ImportedDictionary, imported_dictionary
from .families import Family, family_of_config, parlai_architecture
from .weights import Layout, hf_to_parlai


def check_import_output(out_model: str, overwrite: bool) -> None:
    """Refuse (one line) to replace an existing model unless ``overwrite``."""
    for path in (out_model, out_model + '.opt', out_model + '.dict'):
        if os.path.exists(path) and not overwrite:
            raise DistillationError(
                f'{path} exists: pass --overwrite to replace it, or choose another '
                'model file; nothing was written'
            )


def _read_json(path: str) -> dict | None:
    if not os.path.isfile(path):
        return None
    with open(path, encoding='utf-8') as fh:
        return json.load(fh)


def _first(value: Any) -> Any:
    return value[0] if isinstance(value, list) else value


def _special_ids(
    family: Family, config: Any, generation: Any, tokenizer: Any, where: str
) -> tuple:
    """transformers ids of ParlAI's null, start, end and unknown tokens."""
    end = _first(config.eos_token_id)
    if family.decoder_prefix == 2:
        start = getattr(generation, 'forced_bos_token_id', None)
        start = config.bos_token_id if start is None else start
    else:
        start = config.decoder_start_token_id
    ids = (config.pad_token_id, start, end, tokenizer.unk_token_id)
    if any(i is None for i in ids):
        raise DistillationError(
            f'{where}: pad, start, end and unknown token ids are all needed '
            f'(found {ids}); nothing was written'
        )
    return tuple(int(i) for i in ids)


def _appends_end(backend: Any, end_id: int) -> bool:
    """Whether the tokenizer adds the end token after a text (tried on one)."""
    ids = backend.encode('hello there').ids
    plain = backend.encode('hello there', add_special_tokens=False).ids
    return len(ids) > len(plain) and ids[-1] == end_id


def text_options(
    family: Family,
    config: Any,
    generation: Any,
    appends_end: bool,
    metadata: dict | None,
) -> dict[str, Any]:
    """History, truncation and decoding options of the imported model."""
    prefix = family.decoder_prefix
    positions = config.max_position_embeddings
    options: dict[str, Any] = {
        'text_truncate': positions,
        'label_truncate': positions - prefix,
        'history_add_global_end_token': 'end' if appends_end else None,
    }
    if generation is not None:
        if generation.max_length:
            options['label_truncate'] = min(positions, generation.max_length) - prefix
        beams = generation.num_beams or 1
        options.update(
            inference='beam' if beams > 1 else 'greedy',
            beam_size=beams,
            beam_min_length=max((generation.min_length or 0) - prefix, 0),
            beam_block_ngram=generation.no_repeat_ngram_size or -1,
            beam_context_block_ngram=generation.encoder_no_repeat_ngram_size or -1,
        )
    if metadata:
        options.update(
            {
                key: metadata[key]
                for key in (
                    'delimiter',
                    'history_size',
                    'history_reversed',
                    'person_tokens',
                    'add_p1_after_newln',
                    'split_lines',
                    'use_reply',
                    'text_truncate',
                    'label_truncate',
                )
            }
        )
        options['history_add_global_end_token'] = (
            'end' if metadata['history_add_global_end_token'] else None
        )
    if family.decoder_prefix == 2:
        options['history_add_global_end_token'] = None
    return options


def parlai_opt(family: Family, values: dict[str, Any], datapath: str) -> dict[str, Any]:
    """Every option of ``-m transformer/generator`` or ``-m bart``, defaults overridden by ``values``."""
    from parlai.core.params import ParlaiParser

    opt = ParlaiParser(True, True).parse_args(
        ['-m', family.parlai_model, '-dp', datapath]
    )
    opt = dict(opt)
    opt.update(values)
    # No saved datatype, as in a stripped model: evaluating then builds no optimizer.
    for key in (
        'datapath',
        'parlai_home',
        'download_path',
        'override',
        'starttime',
        'datatype',
    ):
        opt.pop(key, None)
    return opt


def _reorder(state: dict[str, torch.Tensor], order: list[int]) -> None:
    if order == list(range(len(order))):
        return
    index = torch.tensor(order)
    for key in (
        'embeddings.weight',
        'encoder.embeddings.weight',
        'decoder.embeddings.weight',
    ):
        state[key] = state[key][index].clone()


@dataclass
class ImportResult:
    """The written model file, what it loads as, and its dictionary."""

    model_file: str
    model: str
    dict_tokenizer: str
    reordered: bool


def _load(hf_dir: str) -> tuple[Any, Any, Any, Any]:
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, GenerationConfig

    model = AutoModelForSeq2SeqLM.from_pretrained(hf_dir, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(hf_dir, local_files_only=True)
    generation = None
    if os.path.isfile(os.path.join(hf_dir, 'generation_config.json')):
        generation = GenerationConfig.from_pretrained(hf_dir, local_files_only=True)
    return model, tokenizer, generation, model.config


def import_from_hf(
    hf_dir: str, out_model: str, datapath: str, overwrite: bool = False
) -> ImportResult:
    """Write the ParlAI model ``out_model`` from the transformers folder ``hf_dir``."""
    config_json = _read_json(os.path.join(hf_dir, 'config.json'))
    if config_json is None:
        raise DistillationError(
            f'{hf_dir} has no config.json: not a transformers model folder'
        )
    family = family_of_config(config_json, hf_dir)
    check_import_output(out_model, overwrite)
    model, tokenizer, generation, config = _load(hf_dir)
    arch = parlai_architecture(family, config_json, hf_dir)
    if (
        family.variant == 'xlm'
        and config.scale_embedding
        and config.tie_word_embeddings
    ):
        raise DistillationError(
            f'{hf_dir}: BlenderbotSmall scales encoder embeddings but not decoder ones '
            '(scale_embedding with tied embeddings); ParlAI scales both, so the '
            'decoder would differ; nothing was written'
        )
    if not hasattr(tokenizer, 'backend_tokenizer'):
        raise DistillationError(
            f'{hf_dir}: no fast (tokenizers) tokenizer; nothing was written'
        )
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    ids = _special_ids(family, config, generation, tokenizer, hf_dir)
    metadata = _read_json(os.path.join(hf_dir, 'parlai_inputs.json'))
    rows = model.get_input_embeddings().weight.size(0)
    dictionary = imported_dictionary(
        spec, rows, ids, (metadata or {}).get('dictionary'), hf_dir
    )
    layout = Layout(
        family,
        config.encoder_layers,
        config.decoder_layers,
        start_id=ids[1],
        embeddings_scale=bool(config.scale_embedding),
    )
    state = hf_to_parlai(model.state_dict(), layout, hf_dir)
    _reorder(state, dictionary.parlai_to_hf)
    state['START'] = torch.LongTensor([1])
    values = {
        **arch,
        **dictionary.options,
        **text_options(
            family,
            config,
            generation,
            _appends_end(tokenizer.backend_tokenizer, ids[2]),
            metadata,
        ),
        'model': family.parlai_model,
        'model_file': out_model,
        'dict_file': out_model + '.dict',
        'init_model': None,
        'dict_maxtokens': -1,
        'dict_minfreq': 0,
    }
    if dictionary.files:
        values['bpe_vocab'] = out_model + '.dict-vocab.json'
        values['bpe_merge'] = out_model + '.dict-merges.txt'
    opt = parlai_opt(family, values, os.path.dirname(os.path.abspath(out_model)))
    write_model(out_model, state, opt, dictionary)
    return ImportResult(
        out_model,
        family.parlai_model,
        dictionary.options['dict_tokenizer'],
        dictionary.parlai_to_hf != list(range(rows)),
    )


def write_model(
    out_model: str,
    state: dict[str, torch.Tensor],
    opt: dict,
    dictionary: ImportedDictionary,
) -> None:
    """Write the checkpoint, ``.opt``, ``.dict`` and the dictionary's extra files."""
    for suffix, text in dictionary.files.items():
        atomic_write(out_model + '.dict' + suffix, lambda fh, text=text: fh.write(text))
    atomic_write(out_model + '.dict', lambda fh: fh.write(dictionary.file_text()))
    with atomic_path(out_model) as tmp:
        torch.save({'model': state}, tmp)
    atomic_write(
        out_model + '.opt', lambda fh: (json.dump(opt, fh, indent=4), fh.write('\n'))
    )
