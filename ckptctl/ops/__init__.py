"""Operations: what each command does, as data (listings, reports, plans), over the layouts.

The CLI renders these; a training script or an ops tool can call them directly. Nothing here
prints. See docs/architecture.md.
"""
