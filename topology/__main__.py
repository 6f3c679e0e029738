"""``python -m marketswarm.topology``: the same command line as ``marketswarm``."""

from marketswarm.topology.shell.cli import main

main()
