"""``python -m voxserve`` is the ``voxserve`` command."""

import sys

from .cli import main

sys.exit(main())
