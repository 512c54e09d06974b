"""Search the student: shapes and losses by distilled quality and measured speed.

``python -m anti_scaling.scripts.search`` (docs/search.md). Split by job:

- :mod:`.space`: the search space, its defaults and its file / command-line forms;
- :mod:`.checks`: an empty or contradictory space stops with one line;
- :mod:`.candidate`: one sampled student (kind, shape, loss options);
- :mod:`.commands`: its ``parlai train_model`` commands and recipe file;
- :mod:`.trial`: one trial (flash distillation in process, pruning, measurement);
- :mod:`.measure`: quality and speed against the teacher, as the report measures;
- :mod:`.baselines`: no-teacher students of the chosen shapes, and the
  teacher's margin over them;
- :mod:`.prune`: the pruning rule of a two-objective study, and its cost proxy;
- :mod:`.settings`: the command's settings and what a study fixes;
- :mod:`.study`: storage, study (created or resumed), the run;
- :mod:`.outputs`, :mod:`.pareto`: trials JSON, front Markdown, plot, recipes.
"""
