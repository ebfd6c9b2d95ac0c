"""``post_with_retries``: POST a body until it is taken, under the one retry rule; it never raises.

Job callbacks and webhooks both send this way:
- a 2xx answer is ``delivered``;
- ``UrlNotAllowed`` is ``refused`` at once: the policy's verdict (a refused address, a name that does not
  resolve, a malformed URL) would be the same on every retry;
- anything else (another status, no answer in time, a connection or TLS error, a reply over the size cap, an
  error nobody foresaw) is a failed attempt, retried after ``retry.py``'s delay until the rule's attempts are
  spent: then ``failed``, a dead delivery.
Redirects are not followed. Cancellation is not caught: shutting down stops a delivery.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from captioner.errors import CaptionerError, UrlNotAllowed
from captioner.outbound.client import OutboundClient
from captioner.outbound.retry import RetryRule, Rng

logger = logging.getLogger("captioner.outbound")

Outcome = Literal["delivered", "failed", "refused"]
Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True)
class Delivery:
    outcome: Outcome
    attempts: int
    problem: str  # the last attempt's problem ("" once delivered): for the log, never for the caller's client


async def post_with_retries(
    client: OutboundClient,
    url: str,
    body: bytes,
    *,
    headers: Mapping[str, str],
    allow_private: bool,
    timeout_s: float,
    rule: RetryRule,
    rng: Rng,
    sleep: Sleep,
) -> Delivery:
    """POST ``body`` to ``url`` until a 2xx answer, at most ``rule.attempts`` times."""
    problem = "no attempt"
    for attempt in range(1, rule.attempts + 1):
        if attempt > 1:
            await sleep(rule.delay(attempt - 1, rng))
        try:
            reply = await client.call(
                "POST", url, allow_private=allow_private, timeout_s=timeout_s, headers=headers, content=body
            )
        except UrlNotAllowed as refusal:
            return Delivery("refused", attempt, refusal.message)
        except CaptionerError as error:
            problem = error.message
        except Exception as error:  # e.g. UnicodeError from a resolver: this delivery's failure, nobody else's
            logger.warning("outbound POST attempt %d failed unexpectedly", attempt, exc_info=True)
            problem = type(error).__name__
        else:
            if reply.ok:
                return Delivery("delivered", attempt, "")
            problem = f"HTTP {reply.status}"
    return Delivery("failed", rule.attempts, problem)
