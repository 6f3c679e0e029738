"""The gateway: REST, one SSE connection per tab, and the dashboard's files."""
