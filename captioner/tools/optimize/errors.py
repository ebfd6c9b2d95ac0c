"""The error ``captioner optimize`` reports as a usage error (exit 2)."""


class OptimizeError(ValueError):
    """A usage error, or a step that could not be done: one line for the operator."""
