"""``python -m napari_refsr`` runs the ``refsr`` command line."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
