"""``python -m tools.loadtest``: the same as ``gateway-loadtest``."""

import sys

from tools.loadtest.harness import main

sys.exit(main())
