"""Students leaving training: stripped of their projections (:mod:`.strip`)."""
