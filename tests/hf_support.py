"""Tiny models for the Hugging Face export/import tests, all built offline."""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

import torch
from helpers import train

CHITCHAT = 'anti_scaling.tasks.chitchat'
#: The trained student of the export tests: small enough to train in seconds,
#: trained enough that its greedy replies depend on the context.
CHITCHAT_MODEL = {
    'task': CHITCHAT,
    'chitchat_max_conversations': 100,
    'model': 'transformer/generator',
    'variant': 'prelayernorm',
    'activation': 'gelu',
    'n_layers': 2,
    'embedding_size': 64,
    'ffn_size': 128,
    'n_heads': 4,
    'dict_tokenizer': 're',
    'dict_lower': True,
    'dict_maxtokens': 1000,
    'text_truncate': 32,
    'label_truncate': 16,
    'batchsize': 16,
    'learningrate': 1e-2,
    'max_train_steps': 80,
    'num_epochs': -1,
    'dropout': 0,
    # n-gram blocking in both directions, carried into generation_config.json.
    'beam_block_ngram': 2,
    'beam_context_block_ngram': 2,
    'log_every_n_steps': 1000,
    'validation_max_exs': 8,
}


def train_chitchat_model(datapath: str, model_file: str, seed: int = 0) -> str:
    """The tiny pre-LayerNorm chitchat student (``re`` dictionary, lower-cased).

    Every random generator is seeded first: the same model in every session.
    """
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    train(datapath, model_file=model_file, **{**CHITCHAT_MODEL, 'seed': seed})
    return model_file


def random_parlai_model(datapath: str, model_file: str, **options: Any) -> str:
    """A randomly initialised ParlAI generator saved as ``model_file`` (no training).

    ``model='bart'`` builds BART from scratch (never downloads) and saves it as
    a plain ``bart`` model.
    """
    from parlai.core.agents import create_agent
    from parlai.core.params import ParlaiParser

    model = options.pop('model', 'transformer/generator')
    built = 'helpers:ScratchBartAgent' if model == 'bart' else model
    parser = ParlaiParser(True, True)
    opt = parser.parse_kwargs(
        model=built,
        model_file=model_file,
        datapath=datapath,
        datatype='valid',
        **options,
    )
    os.makedirs(os.path.dirname(model_file), exist_ok=True)
    torch.manual_seed(0)
    agent = create_agent(opt)
    with torch.no_grad():
        for name, param in agent.model.named_parameters():
            if 'norm' in name:  # LayerNorms that are not the identity
                param.add_(torch.randn_like(param) * 0.2)
    agent.save(model_file)
    with open(model_file + '.opt') as fh:
        saved = json.load(fh)
    saved['model'] = model
    saved.pop('datatype', None)
    with open(model_file + '.opt', 'w') as fh:
        json.dump(saved, fh)
    return model_file


def chitchat_texts(limit: int) -> list[str]:
    """The first ``limit`` turns of the chitchat conversations (offline)."""
    from anti_scaling.tasks.chitchat.data import load_turns

    texts: list[str] = []
    for turns in load_turns().values():
        texts.extend(turns)
        if len(texts) >= limit:
            break
    return texts[:limit]


def byte_level_bpe(specials: list[str], add_prefix_space: bool, size: int = 400):
    """A byte-level BPE ``tokenizers.Tokenizer`` trained on chitchat text."""
    from tokenizers import ByteLevelBPETokenizer

    bpe = ByteLevelBPETokenizer(add_prefix_space=add_prefix_space)
    bpe.train_from_iterator(
        chitchat_texts(1000),
        vocab_size=size,
        special_tokens=specials,
        show_progress=False,
    )
    return bpe._tokenizer


def write_gpt2_files(datapath: str) -> None:
    """``DATAPATH/gpt2/encoder.json`` and ``vocab.bpe``, as ParlAI's gpt2 dictionary reads.

    A small byte-level BPE stands in for GPT-2's (which ParlAI would download).
    """
    tokenizer = byte_level_bpe([], add_prefix_space=False, size=350)
    spec = json.loads(tokenizer.to_str())['model']
    folder = os.path.join(datapath, 'gpt2')
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, 'encoder.json'), 'w', encoding='utf-8') as fh:
        json.dump(spec['vocab'], fh, ensure_ascii=False)
    with open(os.path.join(folder, 'vocab.bpe'), 'w', encoding='utf-8') as fh:
        fh.write('#version: 0.2\n')
        fh.writelines(' '.join(m) + '\n' for m in spec['merges'])


def random_hf_folder(folder: str, family: str) -> dict[str, int]:
    """A randomly initialised transformers model and tokenizer saved in ``folder``.

    ``family``: ``blenderbot``, ``blenderbot-small`` or ``bart``. The special
    tokens sit where those models put them (BART: ``<s>`` 0, ``<pad>`` 1).
    Returns the special ids.
    """
    import transformers
    from tokenizers import processors

    shutil.rmtree(folder, ignore_errors=True)
    bart = family == 'bart'
    specials = (
        ['<s>', '<pad>', '</s>', '<unk>'] if bart else ['<pad>', '<s>', '</s>', '<unk>']
    )
    tok = byte_level_bpe(specials, add_prefix_space=not bart)
    ids = {t: tok.token_to_id(t) for t in specials}
    single = '<s> $A </s>' if bart else '$A </s>'
    tok.post_processor = processors.TemplateProcessing(
        single=single, special_tokens=[(t, ids[t]) for t in ('<s>', '</s>')]
    )
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token='<s>',
        eos_token='</s>',
        pad_token='<pad>',
        unk_token='<unk>',
    )
    common = dict(
        vocab_size=tok.get_vocab_size(),
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        max_position_embeddings=64,
        pad_token_id=ids['<pad>'],
        bos_token_id=ids['<s>'],
        eos_token_id=ids['</s>'],
        dropout=0.0,
    )
    if bart:
        config = transformers.BartConfig(
            **common, decoder_start_token_id=ids['</s>'], forced_bos_token_id=ids['<s>']
        )
    elif family == 'blenderbot':
        config = transformers.BlenderbotConfig(
            **common, decoder_start_token_id=ids['<s>'], scale_embedding=True
        )
    else:
        config = transformers.BlenderbotSmallConfig(
            **common, decoder_start_token_id=ids['<s>'], scale_embedding=False
        )
    torch.manual_seed(0)
    model = transformers.AutoModelForSeq2SeqLM.from_config(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if 'layer_norm' in name or 'layernorm' in name:
                param.add_(torch.randn_like(param) * 0.1)
            elif param.dim() > 1:
                param.normal_(0, 0.3)
            else:
                param.normal_(0, 0.1)
    model.eval().save_pretrained(folder)
    fast.save_pretrained(folder)
    return ids
