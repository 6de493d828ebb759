"""`python -m semrl ...` (what `accelerate launch -m semrl ...` runs)."""

import sys

from semrl.cli import main

sys.exit(main())
