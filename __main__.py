"""`python -m arnodes ...`: the same CLI as the `arnodes` console script."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
