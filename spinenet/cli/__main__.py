"""``python -m spinenet.cli`` runs the ``spinenet`` command."""

import sys

from spinenet.cli import main

sys.exit(main())
