"""``python -m maedfer.cli``: the ``maedfer`` command line.

Documented in docs/design.md, "The command line".
"""

import sys

from maedfer.cli.main import main

sys.exit(main())
