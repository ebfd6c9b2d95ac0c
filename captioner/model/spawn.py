"""Starting the model process without the parent's script.

multiprocessing's spawn re-imports the parent's ``__main__`` in the child, to find what was defined there. The
model process needs none of it (its target is in process_child.py), and re-running it does harm: a script that
loads the model at its top level, without the ``if __name__ == "__main__":`` guard, would load it again inside
the child (which spawn refuses), and code read from stdin has no file to import at all.
"""

from __future__ import annotations

import contextlib
import sys
import types
from collections.abc import Iterator
from multiprocessing.process import BaseProcess


def start_without_main(process: BaseProcess) -> None:
    """``process.start()``, with an empty ``__main__`` for spawn to describe to the child."""
    with _empty_main():
        process.start()


@contextlib.contextmanager
def _empty_main() -> Iterator[None]:
    main = sys.modules.get("__main__")
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        if main is not None:
            sys.modules["__main__"] = main
