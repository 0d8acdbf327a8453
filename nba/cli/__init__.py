"""The `nba` command line: one Typer app (`nba.cli.app`) and one module of thin commands per
group. Nothing outside this package imports it; the commands call plain functions of the
library, which tests call directly."""
