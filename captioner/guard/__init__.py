"""Who may call the API and how often: API keys and rate limits, enforced by one ASGI gate in front of ``/api/*``."""
