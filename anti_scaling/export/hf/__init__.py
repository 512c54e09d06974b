"""ParlAI generators to and from Hugging Face transformers.

- :mod:`.to_hf`: :func:`~.to_hf.export_to_hf` writes a transformers folder
  (weights, configs, tokenizer, README, input helper, optional int8 copy);
- :mod:`.from_hf`: :func:`~.from_hf.import_from_hf` writes a ParlAI model from one;
- :mod:`.families`: which transformers class each ParlAI layout is, and both configs;
- :mod:`.weights`: the state-dict mapping, both ways;
- :mod:`.tokenizer` / :mod:`.dictionary`: ParlAI dictionary -> tokenizer, and back;
- :mod:`.generation`, :mod:`.history`: decoding options and ParlAI's input settings;
- :mod:`.parlai_inputs`: the input helper copied into every export;
- :mod:`.verify`: the comparison with ParlAI; :mod:`.readme`: the folder's README.

Needs the ``hf`` extra (``pip install -c constraints.txt -e '.[hf]'``). The
command lines are :mod:`anti_scaling.scripts.export_hf` and
:mod:`anti_scaling.scripts.import_hf`.
"""
