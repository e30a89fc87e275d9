"""``python -m conveyor.contracts.docs``: the same as ``conveyor contracts docs``."""

from conveyor.contracts.docs import main

raise SystemExit(main())
