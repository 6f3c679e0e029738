"""``python -m marketswarm.topology``: the same command line as ``marketswarm``."""

from marketswarm.topology.cli import main

main()
