"""Shared pytest setup.

- The header names the kernel paths every path-parametrised test runs.
- PostgreSQL fixtures (docs/testing.md):

  ``postgres_url`` (session)
      The URL of the test server: ``LOCALRANK_TEST_PG_URL``, else the URL that ``make postgres``
      wrote to ``.pg/url``. It is checked once with a real connection. When no server can be
      reached the test is skipped, except under ``CI=true``, where it fails: a PostgreSQL test
      never skips in CI.
  ``pg_schema`` (function)
      A fresh schema in that database for one test, dropped (with everything in it) after the
      test. ``pg_schema.name`` is its name and ``pg_schema.url`` a URL whose connections have
      ``search_path`` set to it, so unqualified table names land in it.
  ``pg_schema_url`` (function)
      Just ``pg_schema.url``, for code that takes a database URL.
- MovieLens-100K (docs/data.md): ``cache_dir`` (session), the verified cache, fetched once;
  ``ml100k`` (session), the parsed data. When the data cannot be fetched the tests fail, with
  the loader's message; they never fall back to other data.
- The engine tests' world (``engine_fixtures.py``): ``keys`` (module), a signing key pair that
  builds signed bundles of the small catalog, and ``plain`` (module), that bundle with every
  segment unpublished.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import pytest
from tools.movielens import MovieLens100K, fetch_movielens_100k, load_movielens_100k

import localrank
from engine_fixtures import Keys
from localrank.errors import DataUnavailableError

REPO_ROOT = Path(__file__).resolve().parent.parent
PG_URL_ENV = "LOCALRANK_TEST_PG_URL"
PG_URL_FILE = REPO_ROOT / ".pg" / "url"


def pytest_report_header() -> list[str]:
    return [
        f"localrank kernels available: {', '.join(localrank.available_kernels())} "
        f"(default {localrank.default_kernel()})"
    ]


def running_under_ci() -> bool:
    """True when the CI variable says so (``CI=true``, as CI systems set it; ``1``/``yes`` too)."""
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


def redact_url(url: str) -> str:
    """The URL with any password replaced, for messages."""
    return re.sub(r"(://[^:/@]*):[^@/]*@", r"\1:***@", url)


def _pg_unavailable(reason: str) -> NoReturn:
    if running_under_ci():
        pytest.fail(
            f"PostgreSQL is required under CI=true and is unavailable: {reason}", pytrace=False
        )
    pytest.skip(f"PostgreSQL unavailable: {reason} (run `make postgres`, see docs/testing.md)")


def _configured_pg_url() -> str | None:
    url = os.environ.get(PG_URL_ENV, "").strip()
    if url:
        return url
    if PG_URL_FILE.is_file():
        return PG_URL_FILE.read_text(encoding="utf-8").strip() or None
    return None


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The URL of a reachable PostgreSQL test database (see the module docstring)."""
    url = _configured_pg_url()
    if url is None:
        _pg_unavailable(f"{PG_URL_ENV} is not set and {PG_URL_FILE} does not exist")
    try:
        import psycopg
    except ImportError as exc:
        _pg_unavailable(f"psycopg is not installed ({exc}); it is in the dev extras")
    try:
        with psycopg.connect(url, connect_timeout=5, autocommit=True) as conn:
            row = conn.execute("SELECT 1").fetchone()
    except psycopg.Error as exc:
        _pg_unavailable(f"cannot connect to {redact_url(url)}: {exc}".strip())
    if row != (1,):
        pytest.fail(f"{redact_url(url)} answered SELECT 1 with {row!r}", pytrace=False)
    return url


def url_with_search_path(url: str, schema: str) -> str:
    """``url`` with ``-c search_path=schema`` added to its ``options`` query parameter."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    option = f"-c search_path={schema}"
    merged = False
    for i, (key, value) in enumerate(query):
        if key == "options":
            query[i] = (key, f"{value} {option}".strip())
            merged = True
    if not merged:
        query.append(("options", option))
    # libpq decodes %20 in a URI but not '+', so spaces are percent-encoded.
    return urlunsplit(parts._replace(query=urlencode(query, quote_via=quote)))


@dataclass(frozen=True)
class PgSchema:
    """A schema of the test database that belongs to one test."""

    name: str
    url: str


@pytest.fixture
def pg_schema(postgres_url: str) -> Iterator[PgSchema]:
    """A fresh schema for this test; dropped with its contents when the test ends."""
    import psycopg
    from psycopg import sql

    name = f"lrtest_{secrets.token_hex(6)}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
    try:
        yield PgSchema(name=name, url=url_with_search_path(postgres_url, name))
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            # A test that leaves a transaction open on its tables makes the drop fail after
            # 10 s rather than hang.
            conn.execute("SET lock_timeout = '10s'")
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))


@pytest.fixture
def pg_schema_url(pg_schema: PgSchema) -> str:
    """The URL of this test's own schema (``search_path`` set to it)."""
    return pg_schema.url


# -- MovieLens-100K ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def cache_dir() -> Path:
    try:
        return fetch_movielens_100k()
    except DataUnavailableError as exc:
        pytest.fail(f"MovieLens-100K is required by these tests: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def ml100k(cache_dir: Path) -> MovieLens100K:
    return load_movielens_100k(cache_dir)


# -- the engine tests' signed bundles ----------------------------------------------------------


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    return Keys(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def plain(keys: Keys) -> bytes:
    """The small catalog with every segment unpublished: the active segment is the root."""
    return keys.bundle()
