"""Who may call the API and how much: API keys (``api_keys``, ``caller``), per-caller rate limits shared through
Redis (``rate_limit``, ``shared_limiter``), the admission budget and async-job quotas, and which proxies' forwarded
addresses to believe. ``ApiGuard`` and ``AdmissionGate`` are ASGI middleware in front of ``/api/*`` and ``POST /``.
"""
