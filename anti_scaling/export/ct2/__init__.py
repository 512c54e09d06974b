"""ParlAI generators as CTranslate2 models (the ``serve`` extra).

- :mod:`.to_ct2`: :func:`~.to_ct2.export_to_ct2` writes the folder;
- :mod:`.spec`: the model as CTranslate2's ``TransformerSpec``;
- :mod:`.generation`: ParlAI's decoding options in CTranslate2's terms;
- :mod:`.engine`: replies and scores from a folder, as ParlAI gives them;
- :mod:`.beam`: ParlAI's beam search replayed on CTranslate2's logits;
- :mod:`.verify`: the comparison with ParlAI; :mod:`.readme`: the folder's README.

The model description, tokenizer, history settings and verification cases are
the Hugging Face export's (:mod:`..parlai_model`, :mod:`..hf.tokenizer`,
:mod:`..hf.history`, :mod:`..cases`). The command line is
:mod:`anti_scaling.scripts.export_ct2`; serving is :mod:`anti_scaling.serving`.
"""
