"""`python -m sam3_label_studio` = `sam3-label-studio`."""

import sys

from sam3_label_studio.cli import main

sys.exit(main())
