"""``python -m results``: see ``results.cli``."""
import sys

from results.cli import main

sys.exit(main())
