"""The caption path: the use case every entry calls (``use_case``: admit -> look up -> caption -> outcome), the
per-variant service (``service``: hash -> cache -> preprocess -> batcher -> model), the A/B variants, the model's
health and the live statistics the canary analysis reads."""
