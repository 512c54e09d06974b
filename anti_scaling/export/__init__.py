"""Students leaving training: stripped of their projections (:mod:`.strip`),
published as zoo archives (:mod:`.publish`), and written for Hugging Face
transformers or read back from it (:mod:`.hf`)."""
