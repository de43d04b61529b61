"""The aggregation server: ingest privatised reports, aggregate them, publish signed bundles.

Modules, one job each:

- :mod:`~localrank.server.app`: the FastAPI app (``create_app``);
- :mod:`~localrank.server.ingest`: validating a batch against the wire contract and window;
- :mod:`~localrank.server.storage` (+ ``storage.sqlite``, ``storage.postgres``): one schema,
  two backends;
- :mod:`~localrank.server.debias`: unbiased counts, variances and intervals from LDP supports;
- :mod:`~localrank.server.sums`: folding closed epochs into noised partial sums;
- :mod:`~localrank.server.statistics`: populations, engagement, priors;
- :mod:`~localrank.server.offer_embeddings`: offer embeddings learned from the aggregate;
- :mod:`~localrank.server.aggregate`: one aggregation run and the bundle it publishes;
- :mod:`~localrank.server.metrics`, :mod:`~localrank.server.config`,
  :mod:`~localrank.server.cli`, :mod:`~localrank.server.background` (a real uvicorn in a
  thread, for the demo and tests).

Nothing here imports :mod:`localrank.device` (pyproject.toml's import contracts).

The FastAPI/uvicorn/psycopg imports happen in those modules, so ``import localrank.server``
works without the ``server`` extra.
"""

__all__: list[str] = []
