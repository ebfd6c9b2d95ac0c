"""A/B variants: the weighted sticky split, the `models:` config, and a SIGHUP rollback under load."""

from __future__ import annotations

import collections
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from captioner.config import ConfigError, load_settings
from captioner.serving.variants import pick
from tests.support.images import photo
from tests.support.processes import ServerProcess
from tests.support.waits import wait_for

CAPTION = "/api/v1/caption"


def test_pick_splits_by_weight_and_is_sticky() -> None:
    weights = [("control", 90.0), ("candidate", 10.0)]
    counts = collections.Counter(pick(weights, f"key-{i}") for i in range(20_000))
    assert 0.88 < counts["control"] / 20_000 < 0.92
    assert all(pick(weights, f"key-{i}") == pick(weights, f"key-{i}") for i in range(100))


def test_weight_zero_takes_a_variant_out_and_a_reweight_moves_keys_only_to_or_from_it() -> None:
    three = [("a", 1.0), ("b", 1.0), ("c", 1.0)]
    before = {k: pick(three, k) for k in map(str, range(3000))}
    assert set(before.values()) == {"a", "b", "c"}
    rolled_back = [("a", 1.0), ("b", 1.0), ("c", 0.0)]
    after = {k: pick(rolled_back, k) for k in before}
    assert "c" not in after.values()
    # Keys that were on a or b stay exactly where they were; only c's keys move.
    assert all(after[k] == v for k, v in before.items() if v != "c")
    with pytest.raises(ValueError):
        pick([("a", 0.0)], "k")


def write_config(path: Path, variants: list[dict[str, object]]) -> None:
    path.write_text(yaml.safe_dump({"models": variants}))


def test_models_config_inherits_the_model_section_and_refuses_bad_entries(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    write_config(config, [{"variant": "a", "weight": 90}, {"variant": "b", "weight": 10, "path": "weights/b"}])
    settings = load_settings(config, {"CAPTIONER_MODEL__PATH": "weights/a"})
    variants = settings.variants()
    assert [(name, weight, s.model.path) for name, weight, s in variants] == [
        ("a", 90.0, "weights/a"),
        ("b", 10.0, "weights/b"),
    ]
    assert variants[1][2].model.name == settings.model.name  # inherited
    assert load_settings(None, {}).variants()[0][:2] == ("default", 1.0)
    for bad, message in [
        ([{"variant": "a", "nope": 1}], "unknown key models[0].nope"),
        ([{"variant": "a"}, {"variant": "a"}], "models[1].variant 'a' is used twice"),
        ([{"variant": "a", "weight": 0}], "at least one variant with weight > 0"),
        ([{"weight": 1}], "models[0].variant must be a non-empty string"),
        ([{"variant": "a", "weight": -1}], "models[0].weight must be a number >= 0"),
    ]:
        write_config(config, bad)
        with pytest.raises(ConfigError, match=None) as refused:
            load_settings(config, {})
        assert message in str(refused.value)


# --- end to end: two untrained models, one server process, SIGHUP rollback under load ------------------


@pytest.fixture(scope="module")
def two_models(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> tuple[Path, Path]:
    from captioner.tools.init_model import write_untrained_model

    other = write_untrained_model(tmp_path_factory.mktemp("models") / "tiny-b", size="tiny", seed=1)
    return tiny_model_dir, other


@pytest.fixture
def ab_server(tmp_path: Path, two_models: tuple[Path, Path]) -> Iterator[tuple[ServerProcess, Path]]:
    config = tmp_path / "config.yaml"
    a, b = two_models
    variants: list[dict[str, object]] = [
        {"variant": "a", "weight": 50, "path": str(a), "name": "test/tiny-a"},
        {"variant": "b", "weight": 50, "path": str(b), "name": "test/tiny-b"},
    ]
    write_config(config, variants)
    # A/B variants come from the config file; the model path override of ServerProcess is then unused.
    with ServerProcess(a, args=["--config", str(config)]) as server:
        yield server, config


def caption(server: ServerProcess, seed: int) -> dict[str, Any]:
    response = httpx.post(server.url + CAPTION, content=photo(seed), headers={"Content-Type": "image/png"}, timeout=60)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


class ClientLoad:
    """Client threads posting new images until stopped; every request and every thread's error is counted."""

    def __init__(self, url: str, *, clients: int) -> None:
        self.url = url
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.sent = 0
        self.statuses: list[int] = []
        self.failures: list[str] = []  # answers other than 200
        self.errors: list[BaseException] = []  # what ended a client thread (a transport error, say)
        self._seeds = iter(range(1000, 100_000))
        self._threads = [threading.Thread(target=self._client, name=f"client-{i}") for i in range(clients)]

    def _client(self) -> None:
        try:
            with httpx.Client(timeout=60) as http:
                while not self.stop.is_set():
                    with self.lock:
                        seed = next(self._seeds)
                        self.sent += 1
                    response = http.post(self.url + CAPTION, content=photo(seed), headers={"Content-Type": "image/png"})
                    with self.lock:
                        self.statuses.append(response.status_code)
                        if response.status_code != 200:
                            self.failures.append(response.text)
        except BaseException as exc:
            with self.lock:
                self.errors.append(exc)

    def answered(self) -> int:
        with self.lock:
            return len(self.statuses)

    def wait_for_answers(self, count: int) -> None:
        def enough() -> bool:
            assert not self.errors, self.errors
            return self.answered() >= count

        wait_for(enough, lambda: f"{count} answers (only {self.answered()})", 120)

    def __enter__(self) -> ClientLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(timeout=120)
        assert not any(thread.is_alive() for thread in self._threads), "a client thread is stuck"


def test_traffic_splits_sticks_to_the_image_and_rolls_back_on_sighup_without_failures(
    ab_server: tuple[ServerProcess, Path],
) -> None:
    server, config = ab_server
    seen: dict[int, str] = {}
    for seed in range(24):
        body = caption(server, seed)
        assert body["model"] == f"test/tiny-{body['variant']}"
        seen[seed] = body["variant"]
    assert set(seen.values()) == {"a", "b"}
    for seed in range(6):  # sticky: the same image goes to the same variant (and its cache)
        again = caption(server, seed)
        assert (again["variant"], again["cached"]) == (seen[seed], True)
    assert (
        server.metric("captioner_images_total", 'variant="a"') + server.metric("captioner_images_total", 'variant="b"')
        == 24
    )
    assert server.metric("captioner_model_info", 'variant="b",name="test/tiny-b"') == 1

    # Steady load from two clients while variant b is rolled back.
    load = ClientLoad(server.url, clients=2)
    with load:
        load.wait_for_answers(10)  # both clients are in their stride
        variants = yaml.safe_load(config.read_text())["models"]
        variants[1]["weight"] = 0
        write_config(config, variants)
        assert server.process is not None
        server.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 120  # only against a hang: a reload that never applies
        while server.metric("captioner_variant_weight", 'variant="b"') != 0:
            assert time.monotonic() < deadline, "SIGHUP did not apply the new weights"
            time.sleep(0.1)
        load.wait_for_answers(load.answered() + 10)  # and the load goes on after the swap
    assert load.errors == [], load.errors  # no client thread died (a transport error included)
    assert load.failures == []
    assert load.sent == load.answered() >= 20
    after = [caption(server, seed)["variant"] for seed in range(200, 216)]
    assert set(after) == {"a"}
    assert server.alive()  # SIGHUP reloads; it does not stop the server


def test_a_reload_plans_reweights_loads_and_removals(tmp_path: Path) -> None:
    from typing import cast

    from captioner.serving.variants import Variant, VariantRouter, plan_reload

    config = tmp_path / "config.yaml"
    write_config(config, [{"variant": "a", "path": "w/a"}, {"variant": "b", "path": "w/b"}])
    live = load_settings(config, {})
    router = VariantRouter()
    for name, weight, settings in live.variants():
        router.add(Variant(name, weight, settings, service=cast(Any, None)))
    write_config(config, [{"variant": "a", "path": "w/a", "weight": 0}, {"variant": "c", "path": "w/c"}])
    plan = plan_reload(router, load_settings(config, {}))
    assert plan.reweight == {"a": 0.0}
    assert [name for name, _, _ in plan.load] == ["c"]
    assert plan.remove == ["b"]
    write_config(config, [{"variant": "a", "path": "w/a2"}, {"variant": "b", "path": "w/b"}])
    changed = plan_reload(router, load_settings(config, {}))
    assert [name for name, _, _ in changed.load] == ["a"] and changed.reweight == {"b": 1.0}
