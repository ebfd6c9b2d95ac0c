"""Job callbacks against a real HTTP receiver on 127.0.0.1 (a thread of this process): the HMAC signature as a
receiver checks it, retries with exponential backoff, giving up, and the SSRF policy (loopback refused unless
private networks are allowed); then, without sockets: hosts refused at submission, every delivery error caught,
the shared outbound cap and the deadline on a receiver that never answers."""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from captioner.config import UrlInputSettings, load_settings
from captioner.errors import InvalidRequest, UrlNotAllowed
from captioner.outbound.callbacks import (
    JOB_ID_HEADER,
    SIGNATURE_HEADER,
    CallbackSender,
    sign,
    validate_callback_url,
)
from captioner.outbound.client import OutboundClient
from captioner.outbound.policy import Resolver, system_resolver
from captioner.outbound.url_fetch import UrlFetcher
from tests.support.receiver import Receiver

pytestmark = pytest.mark.anyio

SECRET = "callback-secret-for-tests"


@pytest.fixture
def delays() -> list[float]:
    return []


class Ceiling:
    """Draws the top of each jittered range, so the backoff's ceilings show."""

    def random(self) -> float:
        return 1.0


def sender(
    delays: list[float],
    *,
    allow_private: bool = True,
    timeout_s: float = 5,
    resolver: Resolver = system_resolver,
    transport: httpx.AsyncBaseTransport | None = None,
    client: OutboundClient | None = None,
) -> CallbackSender:
    async def record(seconds: float) -> None:
        delays.append(seconds)  # the backoff, without waiting it out

    client = client or OutboundClient(4, resolver=resolver, transport=transport)
    return CallbackSender(SECRET, client, allow_private=allow_private, timeout_s=timeout_s, sleep=record, rng=Ceiling())


async def close(callbacks: CallbackSender) -> None:
    await callbacks._client.aclose()


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
    await close(callbacks)
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
        await close(callbacks)
    assert len(receiver.received) == 5
    assert delays == [0.5, 1.0, 2.0, 4.0]


async def test_a_closed_port_counts_as_a_failed_attempt(delays: list[float]) -> None:
    with Receiver([200]) as receiver:
        url = receiver.url
    callbacks = sender(delays)  # the receiver is gone: connection refused each time
    assert await callbacks.deliver(url, b"{}", "c" * 32) == "failed"
    await close(callbacks)
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
    await close(strict)


async def test_the_secret_is_not_in_the_senders_repr() -> None:
    client = OutboundClient(1)
    assert SECRET not in repr(CallbackSender(SECRET, client, allow_private=False, timeout_s=1))
    with pytest.raises(ValueError):
        CallbackSender("", client, allow_private=False, timeout_s=1)
    await client.aclose()


# ------------------------------------------------------------------------------------------- without sockets


@pytest.mark.parametrize(
    "url",
    ["http://a..b.example/cb", f"https://{'a' * 64}.example/cb", "http:///cb", "https://.example/cb",
     "http://example..com./cb", "http://ex ample.com/cb", "not a url", "http://[::1/cb"],
)  # fmt: skip
def test_a_callback_host_no_request_could_reach_is_an_invalid_request(url: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        validate_callback_url(url)
    assert (info.value.status_code, info.value.code) == (422, "invalid_request")


@pytest.mark.parametrize(
    "url",
    ["https://hooks.example.com/cb?token=x", "http://127.0.0.1:8080/cb", "http://[::1]/cb", "https://bücher.de/cb",
     "ftp://127.0.0.1/hook"],  # ftp: the policy's refusal (400 url_not_allowed), not a malformed host
)  # fmt: skip
def test_usable_callback_hosts_pass_validation(url: str) -> None:
    validate_callback_url(url)


def stub_dns(address: str) -> Resolver:
    async def resolve(host: str, port: int) -> list[str]:
        return [address]

    return resolve


@pytest.mark.parametrize(
    "failure",
    [httpx.ReadError("reset"), httpx.RemoteProtocolError("garbage"), httpx.UnsupportedProtocol("h9"),
     UnicodeError("encoding with 'idna' codec failed"), RuntimeError("a bug in a transport")],
)  # fmt: skip
async def test_every_delivery_error_is_a_failed_attempt_never_an_exception(
    delays: list[float], failure: Exception
) -> None:
    async def fail(request: httpx.Request) -> httpx.Response:
        raise failure

    callbacks = sender(delays, resolver=stub_dns("93.184.216.34"), transport=httpx.MockTransport(fail))
    assert await callbacks.deliver("https://hooks.example/cb", b"{}", "e" * 32) == "failed"
    assert delays == [0.5, 1.0, 2.0, 4.0]
    await close(callbacks)


async def test_a_resolver_raising_unicode_error_refuses_the_callback(delays: list[float]) -> None:
    async def idna_fails(host: str, port: int) -> list[str]:
        raise UnicodeError("label empty or too long")

    callbacks = sender(delays, resolver=idna_fails, transport=httpx.MockTransport(lambda request: httpx.Response(200)))
    assert await callbacks.deliver("https://hooks.example/cb", b"{}", "f" * 32) == "refused"
    await close(callbacks)


async def test_a_receiver_that_never_answers_holds_a_slot_only_until_the_deadline(delays: list[float]) -> None:
    async def never(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    callbacks = sender(delays, timeout_s=0.05, resolver=stub_dns("93.184.216.34"), transport=httpx.MockTransport(never))
    assert await asyncio.wait_for(callbacks.deliver("https://hooks.example/cb", b"{}", "g" * 32), 30) == "failed"
    assert callbacks._client.in_flight == 0
    await close(callbacks)


async def test_a_2xx_is_delivered_without_reading_its_reply() -> None:
    async def endless() -> AsyncIterator[bytes]:
        while True:
            yield b"x" * 65536

    async def big(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=endless())

    callbacks = sender([], resolver=stub_dns("93.184.216.34"), transport=httpx.MockTransport(big))
    assert await asyncio.wait_for(callbacks.deliver("https://hooks.example/cb", b"{}", "h" * 32), 30) == "delivered"
    await close(callbacks)


async def test_callbacks_and_url_fetches_share_one_cap() -> None:
    """The cap url_input.max_concurrent_fetches counts every outbound call, callbacks included."""
    release = asyncio.Event()
    seen: list[str] = []

    async def slow(request: httpx.Request) -> httpx.Response:
        seen.append(request.method)
        await release.wait()
        return httpx.Response(200, content=b"img")

    client = OutboundClient(2, resolver=stub_dns("93.184.216.34"), transport=httpx.MockTransport(slow))
    fetcher = UrlFetcher(UrlInputSettings(timeout_s=30), client, max_bytes=100)
    fetches = [asyncio.create_task(fetcher.fetch("http://img.example/a.png")) for _ in range(2)]
    callbacks = sender([], timeout_s=30, client=client)
    delivery = asyncio.create_task(callbacks.deliver("https://hooks.example/cb", b"{}", "i" * 32))
    for _ in range(50):
        await asyncio.sleep(0)
    assert seen == ["GET", "GET"] and client.in_flight == 2  # the callback waits for a slot
    release.set()
    assert await asyncio.gather(*fetches) == [b"img", b"img"]
    assert await delivery == "delivered" and seen == ["GET", "GET", "POST"]
    await client.aclose()


def test_the_secret_is_not_in_the_settings_repr() -> None:
    settings = load_settings(None, {"CAPTIONER_JOBS__CALLBACK_SECRET": SECRET})
    assert settings.jobs.callback_secret == SECRET
    assert SECRET not in repr(settings) and SECRET not in repr(settings.jobs)
