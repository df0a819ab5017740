"""`python -m musicldm_core ...` (and `torchrun -m musicldm_core ...`): the musicldm command."""

import sys

from .app.cli import main

sys.exit(main())
