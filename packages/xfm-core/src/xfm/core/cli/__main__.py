"""``python -m xfm.core.cli``: the same as the ``xfm`` console script."""

from xfm.core.cli.main import main

raise SystemExit(main())
