"""``python -m marketswarm.ops``: the same command line as ``marketswarm``."""

from marketswarm.ops.cli import main

main()
