"""Derived models: market mode, dealer gravity, liquidity intent and best butterflies (each its own pipeline)."""
