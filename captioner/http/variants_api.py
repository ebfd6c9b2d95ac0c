"""``GET /api/v1/variants``: the live variants (weight, model, live signals) and the canary analysis' state.

``captioner models compare NAME --server URL`` reads it to put live figures beside the registry's scores.
Each variant's ``stats`` cover its model's life (since it was loaded); ``canary`` holds the analysis' last
verdict, whose signals cover the period compared (since that production/canary pair began).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from captioner.http.responses import FastJSONResponse
from captioner.runtime.state import runtime_of


async def variants_report(request: Request) -> Response:
    state = runtime_of(request)
    variants: list[dict[str, Any]] = []
    if state.pool is not None:
        for variant in state.pool.router:
            variants.append(
                {
                    "variant": variant.name,
                    "weight": variant.weight,
                    "model": variant.settings.model.name,
                    "revision": variant.settings.model.revision,
                    "stats": variant.service.stats.snapshot().to_json(),
                }
            )
    registry = None
    if state.registry is not None:
        aliases = state.registry.aliases
        canary = aliases.canary
        registry = {
            "name": state.registry.name,
            "production": aliases.production,
            "canary": None if canary is None else {"version": canary.version, "weight": canary.weight},
        }
    canary_status = state.canary.status if state.canary is not None else {"state": "none"}
    return FastJSONResponse({"variants": variants, "canary": canary_status, "registry": registry})
