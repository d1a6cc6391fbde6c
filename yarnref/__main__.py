"""``python -m yarnref``: the ``yarnref`` command (:mod:`yarnref.cli`)."""

import sys

from .cli import main

sys.exit(main())
