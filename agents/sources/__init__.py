"""Market sources: producers (no consumer groups) that write provider bytes into the raw streams."""
