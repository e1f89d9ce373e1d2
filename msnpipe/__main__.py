"""python -m msnpipe COMMAND [ARGS]: the same as the installed `msnpipe` (see msnpipe.cli)."""

import sys

from msnpipe.cli import main

sys.exit(main())
