"""Checkpoint layouts: which files and directories of a run are checkpoints, and what they say.

One module per layout (recognise a directory, enumerate its checkpoints, read their metadata, say
what is complete, what is protected, how to resume), over :mod:`ckptctl.formats`. See
docs/architecture.md.
"""
