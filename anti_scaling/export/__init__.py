"""Students leaving training: stripped of their projections (:mod:`.strip`) and
published as zoo archives (:mod:`.publish`)."""
