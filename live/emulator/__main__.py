import sys

from live.emulator.cli import main

sys.exit(main())
