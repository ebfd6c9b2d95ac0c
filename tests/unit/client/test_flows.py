"""The client's flows, sans-IO: each flow is driven by hand, with scripted responses and transport errors thrown
into it, so what goes on the wire (the Idempotency-Key) and how long it waits (jittered backoff) are checked
without a socket, a server or a clock. ``Client`` and ``AsyncClient`` only perform these steps."""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from captioner.client import ConnectionFailed, Overloaded
from captioner.client.flows import ApiFlows, Flow, RetryPolicy, Send, Sleep

IMAGE = b"\x89PNG\r\n\x1a\n not really"
CAPTION_BODY = {"status": "success", "captions": [{"text": "a cat", "confidence": 0.5}], "model": "m",
                "cached": False, "image_sha256": "ab" * 32}  # fmt: skip
JOB_BODY = {"job_id": "j1", "status": "processing"}
Script = Callable[[httpx.Request], httpx.Response | Exception]


class Run:
    """What one flow did: the requests it sent, the waits it asked for, and how it ended."""

    def __init__(self, flow: Flow[Any], answers: list[Script]) -> None:
        self.requests: list[httpx.Request] = []
        self.sleeps: list[float] = []
        self.result: Any = None
        self.error: BaseException | None = None
        pending = iter(answers)
        try:
            step = next(flow)
            while True:
                if isinstance(step, Sleep):
                    self.sleeps.append(step.seconds)
                    step = flow.send(None)
                    continue
                assert isinstance(step, Send)
                self.requests.append(step.request)
                answer = next(pending)(step.request)
                step = flow.throw(answer) if isinstance(answer, Exception) else flow.send(answer)
        except StopIteration as done:
            self.result = done.value
        except Exception as exc:
            self.error = exc
        assert next(pending, None) is None, "the flow stopped before using every scripted answer"

    def keys(self) -> list[str | None]:
        return [request.headers.get("Idempotency-Key") for request in self.requests]


def ok(body: dict[str, Any], status: int = 200) -> Script:
    return lambda request: httpx.Response(status, json=body, request=request)


def refused(status: int, retry_after: str | None = None) -> Script:
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    body = {"status": "error", "error": {"code": "overloaded" if status == 503 else "rate_limited", "message": "x"}}
    return lambda request: httpx.Response(status, json=body, headers=headers, request=request)


def broken(kind: type[httpx.TransportError]) -> Script:
    return lambda request: kind("broken", request=request)


def flows(rand: Callable[[], float] = lambda: 0.5, **policy: Any) -> ApiFlows:
    return ApiFlows("http://captioner.test", api_key="", timeout=5, retry=RetryPolicy(rand=rand, **policy))


# --- the Idempotency-Key -------------------------------------------------------------------------------------


def test_every_caption_and_submit_carries_a_fresh_random_key() -> None:
    api = flows()
    runs = [Run(api.caption(IMAGE, None), [ok(CAPTION_BODY)]) for _ in range(2)]
    runs += [Run(api.submit(IMAGE, None, idempotency_key=None, callback_url=None), [ok(JOB_BODY, 202)])
             for _ in range(2)]  # fmt: skip
    keys = [run.keys()[0] for run in runs]
    assert all(key is not None for key in keys)
    assert len(set(keys)) == 4  # one per logical call
    assert all(uuid.UUID(str(key)).version == 4 for key in keys)  # random, not derived from the image
    assert runs[0].result.text == "a cat" and runs[2].result.job_id == "j1"


def test_a_sync_caption_is_re_sent_after_a_read_timeout_with_its_own_key() -> None:
    run = Run(flows().caption(IMAGE, 2), [broken(httpx.ReadTimeout), broken(httpx.RemoteProtocolError),
                                          ok(CAPTION_BODY)])  # fmt: skip
    assert run.error is None and run.result.text == "a cat"
    assert len(run.requests) == 3 and len(set(run.keys())) == 1 and run.keys()[0]
    assert [r.content for r in run.requests] == [IMAGE] * 3
    assert all(r.url.params["num_captions"] == "2" for r in run.requests)


def test_the_callers_key_is_used_on_every_attempt() -> None:
    api = flows()
    caption = Run(api.caption(IMAGE, None, idempotency_key="order-17"), [refused(503, "1"), ok(CAPTION_BODY)])
    submit = Run(api.submit(IMAGE, None, idempotency_key="order-18", callback_url=None),
                 [broken(httpx.ReadError), ok(JOB_BODY, 202)])  # fmt: skip
    assert caption.keys() == ["order-17", "order-17"]
    assert submit.keys() == ["order-18", "order-18"]


def test_a_submit_is_re_sent_after_a_broken_connection_with_the_same_key() -> None:
    run = Run(flows().submit(IMAGE, None, idempotency_key=None, callback_url=None),
              [broken(httpx.ReadTimeout), ok(JOB_BODY, 202)])  # fmt: skip
    assert run.result.job_id == "j1"
    assert len(run.requests) == 2 and run.keys()[0] == run.keys()[1] is not None


def test_feedback_has_no_key_and_is_never_re_sent_once_it_may_have_arrived() -> None:
    def feedback(api: ApiFlows) -> Flow[None]:
        return api.feedback(image_sha256="ab" * 32, job_id=None, caption="a cat", rating=5, correction=None)

    timed_out = Run(feedback(flows()), [broken(httpx.ReadTimeout)])
    assert isinstance(timed_out.error, ConnectionFailed) and len(timed_out.requests) == 1
    assert timed_out.keys() == [None]
    never_sent = Run(feedback(flows()), [broken(httpx.ConnectError), ok({"status": "accepted"}, 202)])
    assert never_sent.error is None and len(never_sent.requests) == 2  # nothing had left: safe to repeat


def test_a_caption_without_a_key_would_not_be_re_sent() -> None:
    """The rule that keeps the one above honest: a POST is re-sent after it may have arrived only with a key."""
    api = flows(max_retries=3)
    api.new_key = lambda: ""  # no key: a caption as the client sent them before keys
    run = Run(api.caption(IMAGE, None), [broken(httpx.ReadTimeout)])
    assert isinstance(run.error, ConnectionFailed)
    assert run.keys() == [None]  # one request, not re-sent


# --- jittered waits ----------------------------------------------------------------------------------------


def test_backoff_waits_are_a_random_share_of_the_doubling_ceiling() -> None:
    draws = iter([0.0, 0.5, 0.999])
    run = Run(flows(rand=lambda: next(draws)).caption(IMAGE, None),
              [broken(httpx.ConnectError)] * 3 + [ok(CAPTION_BODY)])  # fmt: skip
    assert run.error is None
    assert run.sleeps == pytest.approx([0.0, 0.5, 0.999 * 2.0])  # ceilings 0.5, 1, 2 s (backoff_s 0.5, doubling)


def test_retry_after_is_a_floor_and_the_jitter_comes_on_top() -> None:
    run = Run(flows(rand=lambda: 0.5).caption(IMAGE, None), [refused(503, "1"), refused(429, "2"), ok(CAPTION_BODY)])
    assert run.sleeps == pytest.approx([1 + 0.25, 2 + 0.5])


def test_waits_of_many_clients_spread_out() -> None:
    """Clients refused together don't come back together: no two of 50 first waits are equal."""
    seeded = random.Random(7)
    policy = RetryPolicy(rand=seeded.random)
    after_error = [policy.delay(1, 0.0, None) for _ in range(50)]
    after_503 = [policy.delay(1, 0.0, 1.0) for _ in range(50)]
    assert len(set(after_error)) == 50 and all(0 <= d < 0.5 for d in after_error)  # type: ignore[operator]
    assert len(set(after_503)) == 50 and all(1 <= d < 1.5 for d in after_503)  # type: ignore[operator]


def test_the_waits_stay_within_the_calls_budget() -> None:
    policy = RetryPolicy(max_wait_s=1.2, rand=lambda: 0.99)
    assert policy.delay(1, 0.0, 1.0) == pytest.approx(1.2)  # Retry-After fits; the jitter is cut to the budget
    assert policy.delay(1, 0.0, 2.0) is None  # Retry-After alone is over it: the caller gets the 503
    assert policy.delay(2, 1.2, None) is None  # nothing left
    assert policy.delay(4, 0.0, None) is None  # max_retries 3
    run = Run(flows(max_wait_s=0.5).caption(IMAGE, None), [refused(503, "1")])
    assert isinstance(run.error, Overloaded) and run.error.retry_after_s == 1.0 and run.sleeps == []


@pytest.fixture(autouse=True)
def _no_sleeping(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Flows never sleep themselves (they yield Sleep): fail loudly if one ever did."""
    import time

    monkeypatch.setattr(time, "sleep", lambda s: pytest.fail("a flow slept"))
    yield
