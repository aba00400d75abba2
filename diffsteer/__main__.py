"""`python -m diffsteer` runs the command line."""

import sys

from diffsteer.cli import main


sys.exit(main())
