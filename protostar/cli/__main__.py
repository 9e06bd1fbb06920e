"""``python -m protostar.cli``: the same as the ``protostar`` command."""

import sys

from protostar.cli import main

sys.exit(main())
