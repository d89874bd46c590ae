"""``python -m caffepy.cli <command> <args>``: the same as ``caffepy`` and ``python -m caffepy``."""
import sys

from . import main

if __name__ == "__main__":
    sys.exit(main())
