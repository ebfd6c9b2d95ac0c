"""The one retry rule of outbound calls worth repeating (job callbacks, webhooks): exponential backoff with
full jitter, as a pure function.

Before retry ``n`` (1 for the first retry) the sender sleeps a uniformly random time in
``[0, min(cap_s, base_s * 2 ** (n - 1)))``: the ceiling doubles each time until ``cap_s``, and the jitter
spreads out the retries of many senders that failed together, so a receiver that was down comes back to a
trickle rather than a stampede ("full jitter", from AWS's "Exponential Backoff and Jitter").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


class Rng(Protocol):
    """What the rule draws from: ``random.Random`` or a test's stand-in."""

    def random(self) -> float: ...


def retry_delay(attempt: int, base_s: float, cap_s: float, rng: Rng) -> float:
    """Seconds to wait before retry number ``attempt`` (1 for the first retry)."""
    if attempt < 1:
        raise ValueError("attempt counts retries from 1")
    ceiling = min(cap_s, base_s * 2.0 ** min(attempt - 1, 64))  # the exponent bounded: no float overflow
    return rng.random() * ceiling


@dataclass(frozen=True)
class RetryRule:
    attempts: int  # in all, the first one included
    base_s: float
    cap_s: float

    def delay(self, attempt: int, rng: Rng) -> float:
        return retry_delay(attempt, self.base_s, self.cap_s, rng)


# Five attempts over about 7.5 s at most: a receiver restarting (a deploy) is usually back by then.
CALLBACK_RETRY = RetryRule(attempts=5, base_s=0.5, cap_s=30.0)
# A drift alert is rare and not urgent; three attempts are enough to ride out a blip.
WEBHOOK_RETRY = RetryRule(attempts=3, base_s=1.0, cap_s=30.0)
