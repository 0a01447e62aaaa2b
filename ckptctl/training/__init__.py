"""The training side: CheckpointManager, DCP saves, signals, RNG state, distributed helpers.

It uses the reading core (formats, layouts, ops) and the durable writer; the reading core never
imports this package. See docs/architecture.md.
"""
