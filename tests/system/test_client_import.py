"""The client is light: importing it loads none of the server's heavy dependencies (a fresh interpreter)."""

from __future__ import annotations

import subprocess
import sys


def test_the_client_imports_nothing_of_the_server() -> None:
    code = "import sys, captioner.client; print(sorted(m for m in ('torch', 'starlette', 'PIL') if m in sys.modules))"
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.strip() == "[]"
