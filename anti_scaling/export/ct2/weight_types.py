"""CTranslate2's weight types an export may ask for (no heavy imports: the
command line reads them to parse its options)."""

QUANTIZATIONS = (
    'float32',
    'int8',
    'int8_float32',
    'int8_float16',
    'int8_bfloat16',
    'float16',
    'bfloat16',
)
