"""``python -m pockettune`` is the same as the ``pockettune`` console script."""

from pockettune.cli import main

raise SystemExit(main())
