"""``python -m workload``: see ``workload.cli``."""
import sys

from workload.cli import main

sys.exit(main())
