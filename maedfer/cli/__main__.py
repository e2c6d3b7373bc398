"""``python -m maedfer.cli``: the ``maedfer`` command line."""

import sys

from maedfer.cli.main import main

sys.exit(main())
