"""``python -m spinenet.cli`` runs the ``spinenet`` command."""

import sys

from spinenet.cli import main

if __name__ == "__main__":  # importing it (as the dependency test does) runs nothing
    sys.exit(main())
