"""``python -m captioner`` behaves exactly like the ``captioner`` console script."""

from captioner.cli import main

raise SystemExit(main())
