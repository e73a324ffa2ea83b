"""`python -m scorelab train ...` and `torchrun -m scorelab train ...`: the same as the `scorelab` command."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
