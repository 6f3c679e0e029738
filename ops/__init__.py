"""Run and operate MarketSwarm: the command line, the supervisor, replay and inspection (the outermost layer)."""
