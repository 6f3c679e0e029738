"""MarketSwarm's message contracts: typed events, models, OCC symbols and the one codec."""
