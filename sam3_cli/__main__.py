"""`python -m sam3_cli ...` is `sam3 ...` (how tests and `sam3 bench` start worker processes)."""

import sys

from sam3_cli.main import main

sys.exit(main())
