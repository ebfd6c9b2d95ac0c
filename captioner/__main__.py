"""``python -m captioner`` behaves exactly like the ``captioner`` console script."""

from .cli import main

raise SystemExit(main())
