"""Development tools that run from the source tree and are not installed with the package: the
demo (``make demo``), the demo models (``make models``), the MovieLens loader and the
evaluation (``make eval``). Nothing in ``localrank`` imports them (pyproject.toml's import
contracts)."""
