"""The `nba` command line: one Typer app (`nba.cli.app`) and one module of thin commands per
group. Nothing outside this package imports it; the commands call plain functions of the
library, which tests call directly."""


def main() -> None:
    """The entry point as installs made before the package split name it (`nba.cli:main`);
    `pip install -e .` rewrites the console script to `nba.cli.app:main`."""
    from nba.cli.app import main as run

    run()
