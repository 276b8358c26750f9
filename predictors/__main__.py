"""``python -m predictors``: see ``predictors.cli``."""
import sys

from predictors.cli import main

sys.exit(main())
