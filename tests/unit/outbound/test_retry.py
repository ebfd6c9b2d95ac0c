"""The one retry rule (exponential backoff, full jitter) as a pure function, and the POST loop that callbacks and
webhooks share, against httpx.MockTransport (no sockets)."""

from __future__ import annotations

import random
from collections.abc import Iterator

import httpx
import pytest

from captioner.errors import UrlFetchFailed
from captioner.outbound.client import OutboundClient
from captioner.outbound.delivery import post_with_retries
from captioner.outbound.retry import CALLBACK_RETRY, WEBHOOK_RETRY, RetryRule, retry_delay


class Fixed:
    def __init__(self, value: float) -> None:
        self.value = value

    def random(self) -> float:
        return self.value


def test_the_ceiling_doubles_from_base_until_the_cap() -> None:
    top = Fixed(1.0)
    assert [retry_delay(n, 0.5, 3.0, top) for n in range(1, 7)] == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]


def test_full_jitter_draws_anywhere_from_zero_to_the_ceiling() -> None:
    assert retry_delay(4, 0.5, 30.0, Fixed(0.0)) == 0.0
    assert retry_delay(4, 0.5, 30.0, Fixed(0.25)) == 1.0
    rng = random.Random(7)
    draws = [retry_delay(3, 1.0, 30.0, rng) for _ in range(2000)]
    assert all(0.0 <= d < 4.0 for d in draws)
    assert min(draws) < 0.1 and max(draws) > 3.9  # spread over the whole range, not bunched at the ceiling


def test_late_attempts_stay_at_the_cap_without_overflow() -> None:
    assert retry_delay(10_000, 0.5, 30.0, Fixed(1.0)) == 30.0


def test_attempts_count_retries_from_one() -> None:
    with pytest.raises(ValueError):
        retry_delay(0, 0.5, 30.0, Fixed(1.0))


def test_the_rules_in_use() -> None:
    assert (CALLBACK_RETRY.attempts, CALLBACK_RETRY.delay(4, Fixed(1.0))) == (5, 4.0)
    assert (WEBHOOK_RETRY.attempts, WEBHOOK_RETRY.delay(2, Fixed(1.0))) == (3, 2.0)


async def public(host: str, port: int) -> list[str]:
    return ["93.184.216.34"]


def scripted(*answers: int | Exception) -> Iterator[int | Exception]:
    yield from answers
    while True:
        yield answers[-1]


async def post(*answers: int | Exception, url: str = "https://hooks.example/x") -> tuple[str, int, str, list[float]]:
    script = scripted(*answers)
    slept: list[float] = []

    async def answer(request: httpx.Request) -> httpx.Response:
        step = next(script)
        if isinstance(step, Exception):
            raise step
        return httpx.Response(step)

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    client = OutboundClient(1, resolver=public, transport=httpx.MockTransport(answer))
    try:
        delivery = await post_with_retries(
            client, url, b"{}", headers={}, allow_private=False, timeout_s=5,
            rule=RetryRule(attempts=4, base_s=1.0, cap_s=10.0), rng=Fixed(1.0), sleep=sleep,
        )  # fmt: skip
    finally:
        await client.aclose()
    return delivery.outcome, delivery.attempts, delivery.problem, slept


@pytest.mark.anyio
async def test_a_2xx_after_failures_is_delivered_with_the_rules_delays() -> None:
    assert await post(503, httpx.ConnectTimeout("slow"), 204) == ("delivered", 3, "", [1.0, 2.0])


@pytest.mark.anyio
async def test_a_receiver_that_keeps_failing_is_given_up_with_the_last_problem() -> None:
    outcome, attempts, problem, slept = await post(500)
    assert (outcome, attempts, problem, slept) == ("failed", 4, "HTTP 500", [1.0, 2.0, 4.0])


@pytest.mark.anyio
@pytest.mark.parametrize("error", [httpx.ReadError("reset"), UrlFetchFailed("x"), UnicodeError("idna"), OSError()])
async def test_any_error_is_a_failed_attempt(error: Exception) -> None:
    outcome, attempts, _, _ = await post(error)
    assert (outcome, attempts) == ("failed", 4)


@pytest.mark.anyio
@pytest.mark.parametrize("url", ["http://127.0.0.1/x", "ftp://hooks.example/x", "http://a..b.example/x", ""])
async def test_a_refusal_by_the_policy_is_not_retried(url: str) -> None:
    outcome, attempts, problem, slept = await post(200, url=url)
    assert (outcome, attempts, slept) == ("refused", 1, []) and problem
