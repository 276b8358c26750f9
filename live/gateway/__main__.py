import sys

from live.gateway.cli import main

sys.exit(main())
