"""MarketSwarm's agents: sources, normalize, hydrate, calc per strategy, publish and the gateway."""
