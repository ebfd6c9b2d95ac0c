"""captioner: a production image-captioning server (BLIP, dynamic batching, caching)."""

__version__ = "0.1.0"
