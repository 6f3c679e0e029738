"""Calc agents: one consumer group per strategy on the changes stream, plus the shared math."""
