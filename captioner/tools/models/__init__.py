"""`captioner models`: the registry's command line (list, show, register, promote, rollback)."""
