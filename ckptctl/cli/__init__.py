"""The ``ckptctl`` command line: a thin Typer client of the core (one module per command)."""
