"""Hydrate: the epoch and the live market state, admitted atomically in Redis (with its script)."""
