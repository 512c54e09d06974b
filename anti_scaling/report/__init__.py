"""The distillation report: quality against speed for a teacher and its students.

Split by job:

- :mod:`.models`: check the inputs and load every model with ParlAI;
- :mod:`.task_options`: the task's options, parsed by ParlAI's parser;
- :mod:`.evaluation`: the test examples, ParlAI's teacher-forced metrics
  (perplexity, token accuracy), teacher agreement, F1 and BLEU;
- :mod:`.timing`: generation, timed on CPU, interleaved across models;
- :mod:`.margins`: each distilled student against a same-shape baseline: the
  teacher's margin, the student's gain, a warning when the margin is small;
- :mod:`.writing`: the JSON, the Markdown table and the plot;
- :mod:`.build`: :func:`~.build.build_report`, which runs them in order.

The command line is :mod:`anti_scaling.scripts.distill_report`.

Memory, computed from the shapes (``anti_scaling.scripts.memory_estimate``):
:mod:`.memory` (a ParlAI training step), :mod:`.memory_terms` (the distillation
terms), :mod:`.memory_recipes` (a recipe's per-rank figures and peak) and
:mod:`.memory_table` (their Markdown tables).
"""
