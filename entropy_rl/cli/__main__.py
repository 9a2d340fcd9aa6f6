"""`python -m entropy_rl.cli CMD ...`, the form `accelerate launch -m entropy_rl.cli` uses."""

import sys

from entropy_rl.cli import main

sys.exit(main())
