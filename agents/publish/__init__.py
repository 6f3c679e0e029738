"""Publishing: the publisher agents, model assembly, and the gateway (REST, SSE, dashboard)."""
