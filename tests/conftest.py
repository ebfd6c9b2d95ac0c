"""Fixtures and hooks for every tier (helpers live in tests/support/, never here).

- Tiers by folder: everything under tests/system/ is marked ``system``, under tests/integration/ ``integration``.
- No skips: a skip fails the suite, except for tests marked ``gpu`` (docs/testing.md).
- Per run (xdist worker): a temp folder of its own, for this process and the processes it starts.
- The tiny model, written once per run and shared by xdist's workers; a live server per module.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.model import shared_tiny_model, tiny_settings
from tests.support.redis import RedisServer
from tests.support.servers import LiveServer

TESTS = Path(__file__).resolve().parent
TIER_MARKERS = {TESTS / "system": pytest.mark.system, TESTS / "integration": pytest.mark.integration}


# The files that take minutes of CPU (training, many server processes, steady load), heaviest first: under xdist
# (``--dist loadfile --no-loadscope-reorder``, as `make test` runs it) they start first, so that none is left running
# alone at the end while the other workers idle. Measured in CPU seconds on the 2-core machine (docs/testing.md);
# a file missing here is only scheduled in collection order.
LONG_FIRST = [  # by measured time per file (--durations), longest first
    "system/test_cheaper_models.py",
    "system/test_lifecycle.py",
    "system/test_registry.py",
    "integration/tools/train/test_train.py",
    "system/test_deploy_run.py",
    "system/test_drain.py",
    "system/test_fleet_chaos.py",
    "system/test_durable_jobs.py",
    "system/test_model_health.py",
    "system/test_failover.py",
    "integration/tools/test_init_model.py",
    "system/test_watchdog.py",
    "system/test_hf_client.py",
    "system/test_shared_rate_limit.py",
    "system/test_tenants.py",
    "system/test_worker_release.py",
    "system/test_evaluate.py",
    "system/test_hardening.py",
    "system/test_flood.py",
    "system/test_variants.py",
    "system/test_caption_interrupt.py",
    "system/test_process_worker.py",
    "system/test_corpus.py",
]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark each test with its tier (``system`` under tests/system/, ``integration`` under tests/integration/);
    when xdist distributes the run, put the long files first (``LONG_FIRST``)."""
    for item in items:
        parents = Path(str(item.fspath)).parents
        for folder, marker in TIER_MARKERS.items():
            if folder in parents:
                item.add_marker(marker)
    if config.getoption("dist", "no") != "no" or os.environ.get("PYTEST_XDIST_WORKER"):
        rank = {TESTS / path: index for index, path in enumerate(LONG_FIRST)}
        items.sort(key=lambda item: rank.get(Path(str(item.fspath)), len(rank)))  # stable: the rest keep their order


# No skips: a test that can't run here fails, so a missing tool (openssl, redis-server, chromium...) can't hide
# as a green run. Only tests marked ``gpu`` may skip, on machines without one. Deselection (``-m "not system"``)
# happens at collection and is no skip, so it is unaffected.
@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> pytest.TestReport:
    report: pytest.TestReport = yield
    if report.skipped and not hasattr(report, "wasxfail") and item.get_closest_marker("gpu") is None:
        report.outcome = "failed"
        report.longrepr = f"this test skipped, and skips fail the suite (docs/testing.md): {_skip_reason(report)}"
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> pytest.CollectReport:
    report: pytest.CollectReport = yield
    if report.skipped:  # a module-level skip or importorskip
        report.outcome = "failed"
        report.longrepr = f"this module skipped, and skips fail the suite (docs/testing.md): {_skip_reason(report)}"
    return report


def _skip_reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    longrepr = report.longrepr
    return str(longrepr[2]) if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)


def _run_folder(factory: pytest.TempPathFactory) -> Path:
    """The folder of this run, shared by its xdist workers (each worker's basetemp is a folder inside it)."""
    base = factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session", autouse=True)
def temp_folder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """This worker's temp folder, for ``tempfile`` here and ``TMPDIR`` in the processes it starts: nothing left in
    /tmp by a run, and no two workers in one folder. pytest keeps the last three runs' folders."""
    folder = tmp_path_factory.getbasetemp() / "tmp"
    folder.mkdir()
    saved_env, saved_tempdir = os.environ.get("TMPDIR"), tempfile.tempdir
    os.environ["TMPDIR"], tempfile.tempdir = str(folder), str(folder)
    yield folder
    tempfile.tempdir = saved_tempdir
    if saved_env is None:
        os.environ.pop("TMPDIR", None)
    else:
        os.environ["TMPDIR"] = saved_env


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model, written once per run (the first worker to ask writes it; the others wait and share it)."""
    return shared_tiny_model(_run_folder(tmp_path_factory) / "models" / "tiny")


@pytest.fixture(scope="module")
def live_server(tiny_model_dir: Path) -> Iterator[LiveServer]:
    """The tiny model served with the default settings, one per test module."""
    with LiveServer(tiny_settings(tiny_model_dir)) as server:
        yield server


@pytest.fixture(scope="module")
def keyed_server(tiny_model_dir: Path) -> Iterator[LiveServer]:
    """A live server that wants ``tests.support.servers.API_KEY``, one per test module."""
    with LiveServer.keyed(tiny_model_dir) as server:
        yield server


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own, on a free port: no state shared with any other test or worker."""
    with RedisServer(tmp_path) as server:
        yield server
