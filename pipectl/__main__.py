"""`python -m pipectl` is the `pipectl` command."""

import sys

from pipectl.cli import main

sys.exit(main())
