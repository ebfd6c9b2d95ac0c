"""The model: what serving needs (``protocol``), the one loader (``loader``), BLIP and how it runs and gets faster.

Light commands (``captioner --help``, the offline tools' argument parsing) import nothing from here.
"""
