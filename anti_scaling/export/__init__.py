"""Students leaving training: stripped of their projections (:mod:`.strip`), and
written for Hugging Face transformers or read back from it (:mod:`.hf`)."""
