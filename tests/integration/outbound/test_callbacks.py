"""Job callbacks against a real HTTP receiver on 127.0.0.1 (a thread of this process): the HMAC signature as a
receiver checks it, retries with exponential backoff, giving up, and the SSRF policy (loopback refused unless
private networks are allowed)."""

from __future__ import annotations

import hmac
from collections.abc import Iterator

import pytest

from captioner.config import load_settings
from captioner.errors import UrlNotAllowed
from captioner.outbound.callbacks import JOB_ID_HEADER, SIGNATURE_HEADER, CallbackSender, sign
from tests.support.receiver import Receiver

pytestmark = pytest.mark.anyio

SECRET = "callback-secret-for-tests"


@pytest.fixture
def delays() -> list[float]:
    return []


def sender(delays: list[float], *, allow_private: bool = True) -> CallbackSender:
    async def record(seconds: float) -> None:
        delays.append(seconds)  # the backoff, without waiting it out

    return CallbackSender(SECRET, allow_private=allow_private, timeout_s=5, sleep=record)


@pytest.fixture
def receiver_500_then_200() -> Iterator[Receiver]:
    with Receiver([500, 200]) as receiver:
        yield receiver


async def test_a_signed_callback_is_retried_after_a_500_and_verifies(
    receiver_500_then_200: Receiver, delays: list[float]
) -> None:
    receiver = receiver_500_then_200
    body = b'{"status":"success","captions":[],"job_id":"' + b"a" * 32 + b'"}'
    callbacks = sender(delays)
    assert await callbacks.deliver(receiver.url, body, "a" * 32) == "delivered"
    await callbacks.aclose()
    assert len(receiver.received) == 2 and delays == [0.5]
    for index in (0, 1):
        headers, received = receiver.received[index]
        assert received == body and receiver.verify(index, SECRET)
        assert headers[JOB_ID_HEADER.lower()] == "a" * 32 and headers["content-type"] == "application/json"
    tampered_headers, _ = receiver.received[1]
    assert not hmac.compare_digest(tampered_headers[SIGNATURE_HEADER.lower()], sign("another secret", body))


async def test_a_receiver_that_keeps_failing_is_given_up_after_exponential_backoff(delays: list[float]) -> None:
    with Receiver([503]) as receiver:
        callbacks = sender(delays)
        assert await callbacks.deliver(receiver.url, b"{}", "b" * 32) == "failed"
        await callbacks.aclose()
    assert len(receiver.received) == 5
    assert delays == [0.5, 1.0, 2.0, 4.0]


async def test_a_closed_port_counts_as_a_failed_attempt(delays: list[float]) -> None:
    with Receiver([200]) as receiver:
        url = receiver.url
    callbacks = sender(delays)  # the receiver is gone: connection refused each time
    assert await callbacks.deliver(url, b"{}", "c" * 32) == "failed"
    await callbacks.aclose()
    assert len(delays) == 4


async def test_the_url_input_policy_applies_to_callbacks(delays: list[float]) -> None:
    strict = sender(delays, allow_private=False)
    with Receiver([200]) as receiver:
        with pytest.raises(UrlNotAllowed):
            strict.check(receiver.url)  # loopback, known without DNS: refused when the job is submitted
        assert await strict.deliver(receiver.url, b"{}", "d" * 32) == "refused"
        assert await strict.deliver("http://localhost:1/x", b"{}", "d" * 32) == "refused"  # DNS says loopback
        assert receiver.received == [] and delays == []
    for url in ("ftp://example.com/x", "http://user:pass@example.com/x", "http://0x7f.1/x", "not a url"):
        with pytest.raises(UrlNotAllowed):
            strict.check(url)
    strict.check("https://example.com/hooks")  # a public name: its DNS is checked at delivery
    await strict.aclose()


def test_the_secret_is_not_in_the_senders_repr() -> None:
    assert SECRET not in repr(CallbackSender(SECRET, allow_private=False, timeout_s=1))
    with pytest.raises(ValueError):
        CallbackSender("", allow_private=False, timeout_s=1)


def test_the_secret_is_not_in_the_settings_repr() -> None:
    settings = load_settings(None, {"CAPTIONER_JOBS__CALLBACK_SECRET": SECRET})
    assert settings.jobs.callback_secret == SECRET
    assert SECRET not in repr(settings) and SECRET not in repr(settings.jobs)
