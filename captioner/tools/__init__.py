"""Offline commands, by family: ``caption/`` (caption files), ``eval/`` (COCO metrics, the gate's scoring),
``train/`` (fine-tuning, its data and model card), ``models/`` (the registry's command line); single commands
flat: ``init_model``, ``synth`` (``data synth``), ``drift_reference``, ``feedback_export``, and ``command_line``,
how each joins the CLI."""
