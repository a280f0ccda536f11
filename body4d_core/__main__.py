"""``python -m body4d_core``: the headless runner."""

import sys

from .cli import main

sys.exit(main())
