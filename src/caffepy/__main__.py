"""``python -m caffepy <command> <args>``: the caffepy command line (see caffepy.cli)."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
