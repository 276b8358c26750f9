"""``python -m sim.profiles``: see ``sim.profiles.cli``."""
from sim.profiles.cli import main

raise SystemExit(main())
