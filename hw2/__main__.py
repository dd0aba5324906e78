"""python -m hw2: the command line (hw2.cli)."""
import sys

from hw2.cli import main

if __name__ == "__main__":
    sys.exit(main())
