"""A/B variants: the weighted sticky split, the `models:` config, and a SIGHUP rollback under load."""

from __future__ import annotations

import collections
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from captioner.config import ConfigError, load_settings
from captioner.serving.variants import pick
from tests.conftest import photo
from tests.system.serverproc import ServerProcess

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


def test_traffic_splits_sticks_to_the_image_and_rolls_back_on_sighup_without_failures(
    ab_server: tuple[ServerProcess, Path],
) -> None:
    server, config = ab_server
    seen: dict[int, str] = {}
    for seed in range(24):
        body = httpx.post(server.url + CAPTION, content=photo(seed), headers={"Content-Type": "image/png"}).json()
        assert body["model"] == f"test/tiny-{body['variant']}"
        seen[seed] = body["variant"]
    assert set(seen.values()) == {"a", "b"}
    for seed in range(6):  # sticky: the same image goes to the same variant (and its cache)
        again = httpx.post(server.url + CAPTION, content=photo(seed), headers={"Content-Type": "image/png"}).json()
        assert (again["variant"], again["cached"]) == (seen[seed], True)
    assert (
        server.metric("captioner_images_total", 'variant="a"') + server.metric("captioner_images_total", 'variant="b"')
        == 24
    )
    assert server.metric("captioner_model_info", 'variant="b",name="test/tiny-b"') == 1

    # Steady load from two clients while variant b is rolled back.
    failures: list[str] = []
    stop = threading.Event()
    counter = iter(range(1000, 100_000))

    def client() -> None:
        with httpx.Client(timeout=30) as http:
            while not stop.is_set():
                response = http.post(server.url + CAPTION, content=photo(next(counter)),
                                     headers={"Content-Type": "image/png"})  # fmt: skip
                if response.status_code != 200:
                    failures.append(response.text)

    threads = [threading.Thread(target=client) for _ in range(2)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)
    variants = yaml.safe_load(config.read_text())["models"]
    variants[1]["weight"] = 0
    write_config(config, variants)
    assert server.process is not None
    server.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 30
    while server.metric("captioner_variant_weight", 'variant="b"') != 0:
        assert time.monotonic() < deadline, "SIGHUP did not apply the new weights"
        time.sleep(0.1)
    time.sleep(1.0)
    stop.set()
    for thread in threads:
        thread.join(timeout=60)
    assert failures == []
    after = [
        httpx.post(server.url + CAPTION, content=photo(seed), headers={"Content-Type": "image/png"}).json()["variant"]
        for seed in range(200, 216)
    ]
    assert set(after) == {"a"}
    assert server.alive()  # SIGHUP reloads; it does not stop the server


def test_a_reload_plans_reweights_loads_and_removals(tmp_path: Path) -> None:
    from typing import Any, cast

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
