"""``captioner optimize``: cheaper versions of a model folder (INT8, structured pruning) as registry candidates."""
