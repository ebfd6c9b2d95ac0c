"""The atheris harness in fuzz/ runs, here without atheris, over its seeds and deterministic mutations of them.

This keeps the harness from rotting (it imports, its checks pass on good input) and is a small fuzz run of its
own: no mutation may raise anything but the decoder's client errors.
"""

from __future__ import annotations

import importlib.util
import random
import sys
from types import ModuleType

import pytest

from tests.support.paths import REPO_ROOT

FUZZ = REPO_ROOT / "fuzz"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"fuzz_{name}", FUZZ / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def harness() -> ModuleType:
    return load("fuzz_images")


@pytest.fixture(scope="module")
def seeds() -> dict[str, bytes]:
    return load("seeds").seed_inputs()  # type: ignore[no-any-return]


EXPECTED = {
    "huge-header.png": "too_large",
    "icon-bomb.ico": "too_large",
    "truncated.jpg": "invalid_image",
    "svg.svg": "unsupported_media_type",
    "pdf.pdf": "unsupported_media_type",
    "empty.bin": "invalid_image",
}


def test_every_seed_gives_its_expected_outcome(harness: ModuleType, seeds: dict[str, bytes]) -> None:
    assert len(seeds) >= 15
    for name, data in seeds.items():
        assert harness.run_one(data) == EXPECTED.get(name, "ok"), name
        harness.TestOneInput(data)  # the entry point atheris calls


def test_the_harness_reports_what_it_must(harness: ModuleType) -> None:
    """An exception that is not a client error must escape the harness: that is how the fuzzer sees a bug."""
    original = harness._load()

    class Broken:
        def __call__(self, data: bytes) -> None:
            raise ValueError("a decoder bug")

    harness._preprocessor = Broken()
    try:
        with pytest.raises(ValueError):
            harness.TestOneInput(b"anything")
    finally:
        harness._preprocessor = original


# Pillow warns about damage it skips, and about headers between its own bomb thresholds (ours refuses those).
@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::PIL.Image.DecompressionBombWarning")
def test_mutations_of_the_seeds_only_raise_client_errors(harness: ModuleType, seeds: dict[str, bytes]) -> None:
    rng = random.Random(20261129)
    sources = [data for data in seeds.values() if data]
    outcomes: dict[str, int] = {}
    for _ in range(2000):
        data = bytearray(rng.choice(sources))
        for _ in range(rng.randrange(1, 6)):
            action = rng.random()
            position = rng.randrange(len(data))
            if action < 0.6:
                data[position] = rng.randrange(256)
            elif action < 0.8:
                del data[position : position + rng.randrange(1, 16)]
            else:
                data[position:position] = rng.randbytes(rng.randrange(1, 16))
            if not data:
                data = bytearray(b"\x00")
        outcome = harness.run_one(bytes(data))
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    assert outcomes.get("ok", 0) > 200 and outcomes.get("invalid_image", 0) > 200, outcomes


# ---- the request-side harness (fuzz/fuzz_requests.py): JSON, base64, num_captions, forwarded addresses, ICO


@pytest.fixture(scope="module")
def requests_harness() -> ModuleType:
    return load("fuzz_requests")


def test_request_seeds_give_only_client_errors(requests_harness: ModuleType) -> None:
    seeds = load("seeds").request_seeds()
    outcomes = {name: requests_harness.run_one(data) for name, data in seeds.items()}
    assert outcomes["json-nested.json"][0] == "invalid_request"  # RecursionError (a 500) before
    assert outcomes["json-big-int.json"][0] == "invalid_request"  # ValueError from int() (a 500) before
    assert outcomes["digits-superscript.txt"][-2] == "invalid_request"  # num_captions from text
    assert outcomes["icon-bomb.ico"][-1] == "too_large"
    assert outcomes["json-image.json"][:3] == ["ok", "ok", "ok"]


def test_request_mutations_only_raise_client_errors(requests_harness: ModuleType) -> None:
    rng = random.Random(13)
    sources = list(load("seeds").request_seeds().values())
    seen: set[str] = set()
    for _ in range(1500):
        data = bytearray(rng.choice(sources))
        for _ in range(rng.randrange(1, 6)):
            position = rng.randrange(len(data))
            if rng.random() < 0.7:
                data[position] = rng.choice([rng.randrange(256), *b'[]{}":,0123456789 \n\xc2\xb2'])
            else:
                data[position:position] = rng.randbytes(rng.randrange(1, 8))
        seen.update(requests_harness.run_one(bytes(data)))
    assert {"ok", "invalid_request"} <= seen
