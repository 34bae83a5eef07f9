"""``python -m segs`` is the ``segs`` command."""

from segs.cli import main

raise SystemExit(main())
