"""Shared fixtures: tiny teachers trained once per test session, offline."""

from __future__ import annotations

import json
import os
import sys

import pytest
import torch

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
if TESTS_DIR not in sys.path:
    sys.path.insert(0, TESTS_DIR)

from helpers import train  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope='session')
def datapath(tmp_path_factory) -> str:
    """ParlAI's data folder for the whole session (never site-packages)."""
    return str(tmp_path_factory.mktemp('parlai_data'))


@pytest.fixture(scope='session')
def teacher_file(tmp_path_factory, datapath) -> str:
    """A 4-layer transformer/generator teacher trained on integration_tests:reverse."""
    model_file = str(tmp_path_factory.mktemp('teacher') / 'model')
    train(
        datapath,
        model='transformer/generator',
        model_file=model_file,
        n_layers=4,
        embedding_size=32,
        ffn_size=64,
        n_heads=4,
        num_epochs=2,
        batchsize=16,
        learningrate=3e-3,
    )
    return model_file


@pytest.fixture(scope='session')
def bart_teacher_file(tmp_path_factory, datapath) -> str:
    """A 3+3-layer `bart` teacher trained from scratch (no download), saved as `bart`."""
    model_file = str(tmp_path_factory.mktemp('bart_teacher') / 'model')
    train(
        datapath,
        model='helpers:ScratchBartAgent',
        model_file=model_file,
        n_encoder_layers=3,
        n_decoder_layers=3,
        embedding_size=32,
        ffn_size=64,
        n_heads=4,
        dict_tokenizer='re',
        n_positions=64,
        truncate=32,
        num_epochs=2,
        batchsize=16,
        learningrate=3e-3,
    )
    with open(model_file + '.opt') as fh:
        opt = json.load(fh)
    opt['model'] = 'bart'
    with open(model_file + '.opt', 'w') as fh:
        json.dump(opt, fh)
    return model_file


@pytest.fixture(scope='session')
def chitchat_model(tmp_path_factory, datapath) -> str:
    """A tiny pre-LayerNorm chitchat student, trained for a few seconds (hf tests)."""
    from hf_support import train_chitchat_model

    return train_chitchat_model(
        datapath, str(tmp_path_factory.mktemp('chat') / 'model')
    )


@pytest.fixture(scope='session')
def chitchat_export(tmp_path_factory, datapath, chitchat_model):
    """The chitchat student exported with --verify (50 contexts) and an int8 copy."""
    from anti_scaling.export.hf.to_hf import export_to_hf

    out = str(tmp_path_factory.mktemp('export') / 'hf')
    return export_to_hf(chitchat_model, out, datapath, verify=True, quantize='int8')
