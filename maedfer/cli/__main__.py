"""``python -m maedfer.cli``: the ``maedfer`` command line.

Documented in docs/design.md, "The command line".
"""

from maedfer.cli.main import main

main()
