"""Packaging for anti_scaling, a knowledge-distillation plugin for ParlAI.

ParlAI 1.7.2 is installed *without* its own dependency list (``pip install
--no-deps parlai==1.7.2``, done by ``make``): that list pins numpy 1.23, pulls
Sphinx, flake8, datasets and a torchvision/torchtext pair that cannot load
against torch 2.13. ``install_requires`` below is the runtime set that ParlAI's
training, evaluation and generation paths actually import, verified together
(see constraints.txt). ``anti_scaling`` checks at import time that ParlAI is
present and says how to install it if not.
"""

from setuptools import find_packages, setup

with open("README.md", encoding="utf-8") as fh:
    long_description = fh.read()

setup(
    name="anti-scaling",
    version="0.1.0",
    description=(
        "Knowledge distillation for ParlAI generators: smaller, faster students "
        "of transformer/generator and BART teachers"
    ),
    long_description=long_description,
    long_description_content_type="text/markdown",
    python_requires=">=3.11,<3.12",
    packages=find_packages(include=["anti_scaling", "anti_scaling.*"]),
    include_package_data=True,
    package_data={"anti_scaling": ["zoo/*.json", "py.typed"]},
    install_requires=[
        # A range, so that installing the plugin next to a CUDA build of torch keeps
        # it. Tested: 2.13.0 (the CPU build pinned in constraints.txt: the whole
        # test suite and `make demo`) and 2.14.1 (a CUDA build on a machine without
        # a GPU: the whole test suite). Older versions were not run: the code
        # itself needs >= 2.5 (torch.serialization.safe_globals), and ParlAI 1.7.2's
        # reduce-on-plateau scheduler needs the workaround of anti_scaling/compat.py
        # from 2.7 on. A newer torch: widen the bound after the suite passes on it.
        "torch>=2.13,<2.15",
        "numpy>=1.23",
        "sacrebleu>=2.3,<3",
        "nltk>=3.8",
        "requests>=2.21,<3",
        "tqdm>=4.62",
        "iopath>=0.1.8",
        "Pillow",
        "PyYAML",
        "scikit-learn",
        "setuptools<81",
        "matplotlib>=3.7",
        "chitchat-dataset==0.9.0",
        # The second corpus (anti_scaling.tasks.chatterbot). Its English files are
        # the same conversations in 1.3.2 and 1.3.3 (one character differs), so the
        # task's splits and figures hold for both; the whole task test suite passed
        # on each. 1.3.1 and older load too, with other conversations (1.3.1: 928
        # distinct, 1.2.2: 585), so they are left out; widen after checking a newer one.
        "chatterbot-corpus>=1.3.2,<=1.3.3",
        # Every ParlAI dictionary: bytelevelbpe (BlenderBot 400M/1B/3B), bpe
        # (BlenderBot 90M and older models), gpt2 and slow_bytelevel_bpe (BART).
        "tokenizers>=0.19",
        "subword-nmt>=0.3.8",
        "regex>=2021.8.3",
    ],
    extras_require={
        "test": ["pytest>=8", "pytest-regressions"],
        "dev": ["black", "ruff"],
        # Converting fairseq BART checkpoints (anti_scaling.fairseq_bart) needs no
        # fairseq for the checkpoints fairseq 0.12 writes for BART; fairseq is
        # needed to check logits (--verify), to unpickle fairseq/omegaconf objects
        # (--trust-checkpoint) and to train BART with fairseq's own tools. fairseq 0.12.2, the last release, does
        # not import on Python 3.11; ve-fairseq 0.12.3 is the 0.12 code as a
        # prebuilt cp311 wheel (no compiler, no build-time torch download, keeps
        # hydra-core 1.3 / omegaconf 2.3); Linux x86_64 wheels only (see
        # docs/fairseq_bart.md for other platforms). Its pins are in constraints.txt.
        "fairseq": ["ve-fairseq==0.12.3"],
        # Hugging Face export/import (anti_scaling.export.hf).
        "hf": ["transformers>=5,<6", "safetensors"],
        # Student architecture search (anti_scaling.search): heartbeats with
        # RetryHeartbeatStaleTrialCallback need optuna >= 4.9; tested with 5.0.
        "search": ["optuna>=4.9,<6"],
        # Serving students at engine speed (anti_scaling.export.ct2,
        # anti_scaling.serving): CTranslate2 (CPU wheels with int8; CUDA builds
        # for float16/int8_float16) and aiohttp for the HTTP endpoint. Tested
        # with ctranslate2 4.8.5 and aiohttp 3.14.5.
        "serve": ["ctranslate2>=4.8,<5", "aiohttp>=3.9,<4"],
    },
    entry_points={
        "console_scripts": [
            "anti-scaling-strip=anti_scaling.scripts.remove_projection_matrices:main",
        ]
    },
    classifiers=[
        "Programming Language :: Python :: 3.11",
        "License :: OSI Approved :: MIT License",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
