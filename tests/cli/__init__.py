"""CLI tests: one module per command, run through typer.testing.CliRunner."""
