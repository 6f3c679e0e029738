"""Normalize: provider frames and Cboe files in, typed events out; everything else to rejects with a reason."""
