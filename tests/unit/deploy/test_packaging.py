"""The Dockerfile, the CLI and the config defaults must agree (no Docker engine runs here)."""

from __future__ import annotations

import json
import re

from captioner.cli import build_parser
from captioner.config import load_settings
from tests.support.paths import REPO_ROOT

ROOT = REPO_ROOT
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def instruction(name: str) -> str:
    """The instruction's arguments, with backslash-continued lines joined."""
    joined = re.sub(r"\\\n\s*", " ", DOCKERFILE)
    match = re.search(rf"^{name}\s+(.+)$", joined, re.MULTILINE)
    assert match, f"Dockerfile has no {name}"
    return match.group(1).strip()


def test_cmd_runs_the_serve_subcommand_of_the_console_script() -> None:
    cmd = json.loads(instruction("CMD"))
    assert cmd[0] == "captioner"
    args = build_parser().parse_args(cmd[1:])
    assert args.command == "serve"
    assert args.host == "0.0.0.0"  # explicit: the config default is loopback, a container must be reachable


def test_the_image_installs_the_hashed_lock_file() -> None:
    runs = re.findall(r"^RUN\s+(.+)$", re.sub(r"\\\n\s*", " ", DOCKERFILE), re.MULTILINE)
    assert any("--require-hashes -r requirements.lock" in run for run in runs)
    assert any("--no-deps" in run and ".[fast]" in run for run in runs)  # nothing unlocked comes in after it
    lock = (ROOT / "requirements.lock").read_text()
    pins = re.findall(r"^([a-z0-9._-]+)==(\S+) \\$", lock, re.MULTILINE)
    assert len(pins) > 30
    assert lock.count("--hash=sha256:") >= len(pins)
    pinned = dict(pins)
    for name in ("starlette", "uvicorn", "transformers", "pillow", "python-multipart", "h11", "httpx"):
        assert name in pinned, name
    # pip reads a requirement and its continuation lines as one: each pin must be followed by its own hashes
    # (a stray pin line, as a bad merge leaves, makes pip refuse the whole file).
    lines = lock.splitlines()
    for number, line in enumerate(lines):
        if line and not line.startswith((" ", "#")):
            assert lines[number + 1].lstrip().startswith("--hash="), f"requirements.lock:{number + 1}: {line}"
    assert len(pinned) == len(pins)  # no package pinned twice


def test_exposed_port_and_healthcheck_match_the_config_default() -> None:
    port = load_settings(ROOT / "config.yaml", {}).server.port
    assert instruction("EXPOSE") == str(port)
    assert f"127.0.0.1:{port}/readyz" in instruction("HEALTHCHECK")


def test_runs_as_non_root_with_a_weights_volume() -> None:
    assert instruction("USER") not in ("root", "0")
    assert "/app/weights" in instruction("VOLUME")
    settings = load_settings(ROOT / "config.yaml", {})
    assert settings.model.path.startswith("weights/")  # relative to WORKDIR /app -> the volume
    assert instruction("WORKDIR") == "/app"


# --- one torch for the tests and the image -----------------------------------------------------------------

TORCH_PINS = ROOT / "requirements-torch.txt"


def torch_pins() -> dict[str, str]:
    lines = [line.strip() for line in TORCH_PINS.read_text().splitlines()]
    pins = dict(line.split("==") for line in lines if line and not line.startswith("#"))
    assert set(pins) == {"torch", "torchvision"}, pins
    return pins


def test_the_image_and_the_tests_install_torch_from_the_one_pin_file() -> None:
    makefile = (ROOT / "Makefile").read_text()
    runs = re.findall(r"^RUN\s+(.+)$", re.sub(r"\\\n\s*", " ", DOCKERFILE), re.MULTILINE)
    assert "requirements-torch.txt" in instruction("COPY")
    assert any(run.strip() == "pip install -r requirements-torch.txt" for run in runs)
    assert re.search(r"^\t\$\(BIN\)/pip install -q -r requirements-torch\.txt$", makefile, re.MULTILINE)
    # Nothing else brings or pins a torch: no torch in the base image, no version written anywhere else.
    assert instruction("FROM").startswith("python:3.11-slim")
    for name, text in (("Dockerfile", DOCKERFILE), ("Makefile", makefile), ("requirements.lock", (ROOT /
                       "requirements.lock").read_text())):  # fmt: skip
        assert not re.search(r"\btorch(vision)?==|pytorch/pytorch", text), name


def test_the_tests_run_the_torch_the_image_ships() -> None:
    from importlib.metadata import version

    for name, pinned in torch_pins().items():
        assert version(name).split("+")[0] == pinned, f"{name} {version(name)} here, {pinned} in the image"
