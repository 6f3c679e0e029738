"""MarketSwarm's stream topology: stream names, the agent graph, the runtime, settings and metrics."""
