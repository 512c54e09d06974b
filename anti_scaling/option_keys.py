"""Names of ParlAI options, grouped by what they describe (one list each).

Students inherit the architecture, dictionary and text options of their teacher;
a teacher-output cache fingerprints the tokenisation and history options; a
published model forgets the paths of the machine it was trained on.
"""

from __future__ import annotations

#: Distillation options that name files or teachers: never part of a recipe,
#: never varied by a search.
TEACHER_AND_FILE_KEYS = (
    'teacher_model',
    'recipe',
    'teacher_cache',
    'distill_config',
    'teacher_weights',
    'intermediate_teacher',
)
#: The layer sizes a student may choose (a recipe's shape).
SHAPE_KEYS = (
    'n_encoder_layers',
    'n_decoder_layers',
    'embedding_size',
    'ffn_size',
    'n_heads',
)
#: Everything that defines a transformer's architecture.
ARCHITECTURE_KEYS = (
    'embedding_size',
    'ffn_size',
    'n_heads',
    'n_layers',
    'n_encoder_layers',
    'n_decoder_layers',
    'n_positions',
    'n_segments',
    'variant',
    'activation',
    'output_scaling',
    'embeddings_scale',
    'learn_positional_embeddings',
    'share_word_embeddings',
    'dropout',
    'attention_dropout',
    'relu_dropout',
)
#: Dictionary options that change how text becomes ids (a cache fingerprints
#: them; the dictionary file itself is compared by content).
TOKENIZATION_KEYS = (
    'dict_class',
    'dict_tokenizer',
    'dict_lower',
    'dict_language',
    'dict_max_ngram_size',
    'dict_nulltoken',
    'dict_starttoken',
    'dict_endtoken',
    'dict_unktoken',
    'dict_textfields',
    'bpe_add_prefix_space',
    'special_tok_lst',
)
#: Files a BPE dictionary reads beside its own.
DICTIONARY_FILE_KEYS = ('bpe_vocab', 'bpe_merge')
#: Every dictionary option a student inherits from its teacher.
DICTIONARY_KEYS = (
    TOKENIZATION_KEYS
    + DICTIONARY_FILE_KEYS
    + (
        'dict_file',
        'dict_minfreq',
        'dict_maxtokens',
        'force_fp16_tokens',
    )
)
#: How ParlAI turns an episode into the model's input and label.
TEXT_KEYS = (
    'truncate',
    'text_truncate',
    'label_truncate',
    'history_size',
    'history_reversed',
    'history_add_global_end_token',
    'person_tokens',
    'split_lines',
    'add_p1_after_newln',
    'delimiter',
)
#: The history options among them (the truncation lengths are stored resolved),
#: and which label ParlAI puts in the history.
HISTORY_KEYS = tuple(k for k in TEXT_KEYS if not k.endswith('truncate')) + (
    'use_reply',
)
#: What a student inherits from its teacher unless the command line says otherwise.
INHERITED_KEYS = ARCHITECTURE_KEYS + DICTIONARY_KEYS + TEXT_KEYS
#: A general option given on the command line stops its specific forms from being
#: inherited: ``--n-layers 3`` means 3 layers in both stacks.
GENERAL_TO_SPECIFIC = {
    'n_layers': ('n_encoder_layers', 'n_decoder_layers'),
    'truncate': ('text_truncate', 'label_truncate'),
}
#: Paths of the machine a model was trained on: cleared when it is published.
MACHINE_PATH_KEYS = ('model_file', 'dict_file', 'init_model', 'init_opt')
#: Options that only describe the training machine or command line: dropped.
MACHINE_ONLY_KEYS = ('datapath', 'parlai_home', 'download_path', 'override')
