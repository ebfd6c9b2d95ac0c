"""Where things are: the repository's root, for tests that read deploy/, fuzz/, docs/ or config.yaml."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
