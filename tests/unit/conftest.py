"""The unit tier's rule, enforced: a unit test starts no process, opens no network socket and loads no model.

While a test under tests/unit/ is collected, set up, run or torn down (module- and session-wide fixtures it
uses included), these fail with ``UnitTierViolation``:

- a TCP/UDP socket (``AF_INET``/``AF_INET6``): a server, a client connection, redis. ``AF_UNIX`` and
  ``socket.socketpair()`` stay allowed: an asyncio event loop wakes itself through one;
- a subprocess (``subprocess``, ``asyncio``'s, ``os.system``/``popen``), ``os.fork``/``posix_spawn``, a
  ``multiprocessing`` process (the model's process worker);
- a model: ``BlipCaptioner(...)``, ``load_captioner(...)``, or any transformers ``PreTrainedModel`` built or loaded
  (``from_pretrained``, ``init-model``'s random one); and the fixtures that stand for them (``tiny_model_dir``,
  ``live_server``, ``keyed_server``, ``redis_server``), refused by name.

Code under test may catch the exception; the attempt still fails the test, at the end of the phase. A test that
needs any of these belongs in tests/integration/ (in-process server, tiny model, loopback) or tests/system/
(processes): docs/testing.md.
"""

from __future__ import annotations

from collections.abc import Generator

import pytest

from tests.support import unit_guard

MODEL_FIXTURES = {"tiny_model_dir", "live_server", "keyed_server", "redis_server"}


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(
    collector: pytest.Collector,
) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
    """Importing a unit test module (module-level code included) is held to the same rule."""
    try:
        with unit_guard.refusing(collector.nodeid):
            report = yield
    except unit_guard.UnitTierViolation as violation:
        report.outcome = "failed"
        report.longrepr = str(violation)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, None, None]:
    # The tiny model folder is made once per run, by whichever test asks first: refuse the fixture itself, so that
    # a unit test asking for it fails whatever ran before it.
    unit_guard.refuse_fixtures(item.nodeid, getattr(item, "fixturenames", ()), MODEL_FIXTURES)
    with unit_guard.refusing(item.nodeid):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    with unit_guard.refusing(item.nodeid):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None, None, None]:
    with unit_guard.refusing(item.nodeid):
        return (yield)
