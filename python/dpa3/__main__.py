"""``python -m dpa3`` runs the ``dpa3`` command line."""

import sys

from .cli.main import main

sys.exit(main())
