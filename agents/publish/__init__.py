"""Publish: the publisher agents, one per (underlying, strategy), and the column table they keep."""
