"""The PostgreSQL test fixtures (tests/conftest.py, docs/testing.md) do what they promise.

- A test gets a working database and a schema of its own, found through its URL.
- Two tests never see each other's tables, and a test's schema is gone when it ends.
- With ``CI=true`` an unreachable server fails the test; without it, the test is skipped.

The last two are checked by running pytest on a small test file in a subprocess, with the same
fixtures loaded as a plugin (``-p conftest``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import psycopg
import pytest

from conftest import PgSchema, redact_url, url_with_search_path

TESTS_DIR = Path(__file__).resolve().parent
# Connection refused at once: nothing listens on the discard port on loopback.
BOGUS_URL = "postgresql://postgres@127.0.0.1:9/localrank_test"


def test_schema_fixture_round_trip(pg_schema: PgSchema) -> None:
    with psycopg.connect(pg_schema.url) as conn:
        assert conn.execute("SELECT current_schema()").fetchone() == (pg_schema.name,)
        conn.execute("CREATE TABLE offers (id integer PRIMARY KEY, title text NOT NULL)")
        conn.execute(
            "INSERT INTO offers (id, title) VALUES (%s, %s), (%s, %s)",
            (1, "Toy Story (1995)", 2, "Café au lait"),
        )
        conn.commit()
    # A second connection sees the committed rows, in the test's schema and nowhere else.
    with psycopg.connect(pg_schema.url) as conn:
        rows = conn.execute("SELECT id, title FROM offers ORDER BY id").fetchall()
        assert rows == [(1, "Toy Story (1995)"), (2, "Café au lait")]
        where = conn.execute(
            "SELECT table_schema FROM information_schema.tables WHERE table_name = 'offers'"
        ).fetchall()
        assert where == [(pg_schema.name,)]


def test_server_is_postgresql_with_utf8(postgres_url: str) -> None:
    with psycopg.connect(postgres_url) as conn:
        assert conn.info.server_version >= 130000
        assert conn.execute("SHOW server_encoding").fetchone() == ("UTF8",)


def _run_inner_pytest(
    tmp_path: Path, source: str, env_updates: dict[str, str], remove_env: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_inner.py").write_text(textwrap.dedent(source), encoding="utf-8")
    env = os.environ.copy()
    for key in remove_env:
        env.pop(key, None)
    env.update(env_updates)
    # tests/ for conftest.py and the repository root for the tools it imports.
    roots = (str(TESTS_DIR), str(TESTS_DIR.parent), env.get("PYTHONPATH"))
    env["PYTHONPATH"] = os.pathsep.join(p for p in roots if p)
    return subprocess.run(
        [
            sys.executable, "-m", "pytest", "-p", "conftest", "-p", "no:cacheprovider",
            "-q", "-rA", "--rootdir", str(tmp_path), str(tmp_path / "test_inner.py"),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )  # fmt: skip


def test_two_tests_are_isolated_and_their_schemas_dropped(
    tmp_path: Path, postgres_url: str
) -> None:
    names_file = tmp_path / "schemas.txt"
    source = f"""
        import psycopg
        import pytest

        @pytest.mark.parametrize("run", [1, 2])
        def test_probe(pg_schema, run):
            with open({str(names_file)!r}, "a") as f:
                f.write(pg_schema.name + "\\n")
            with psycopg.connect(pg_schema.url) as conn:
                # The other run made the same table; it must not be visible here.
                assert conn.execute("SELECT to_regclass('probe')").fetchone() == (None,)
                conn.execute("CREATE TABLE probe (run integer)")
                conn.execute("INSERT INTO probe VALUES (%s)", (run,))
                conn.commit()
                assert conn.execute("SELECT run FROM probe").fetchall() == [(run,)]
    """
    result = _run_inner_pytest(tmp_path, source, {"LOCALRANK_TEST_PG_URL": postgres_url})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout
    names = names_file.read_text(encoding="utf-8").split()
    assert len(names) == 2
    assert names[0] != names[1]
    with psycopg.connect(postgres_url) as conn:
        left = conn.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname = ANY(%s)", (names,)
        ).fetchall()
    assert left == [], f"schemas not dropped after their tests: {left}"


INNER_NEEDS_PG = """
    def test_needs_pg(postgres_url):
        assert postgres_url
"""


def test_unreachable_server_fails_under_ci(tmp_path: Path) -> None:
    result = _run_inner_pytest(
        tmp_path, INNER_NEEDS_PG, {"CI": "true", "LOCALRANK_TEST_PG_URL": BOGUS_URL}
    )
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    assert "1 error" in result.stdout, out
    assert "skipped" not in result.stdout, out
    assert "PostgreSQL is required under CI=true" in result.stdout, out
    assert "127.0.0.1:9" in result.stdout, out


def test_unreachable_server_skips_outside_ci(tmp_path: Path) -> None:
    result = _run_inner_pytest(
        tmp_path, INNER_NEEDS_PG, {"LOCALRANK_TEST_PG_URL": BOGUS_URL}, remove_env=("CI",)
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "1 skipped" in result.stdout, out
    assert "PostgreSQL unavailable" in result.stdout, out


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "postgresql://postgres@127.0.0.1:55432/db",
            "postgresql://postgres@127.0.0.1:55432/db?options=-c%20search_path%3Ds1",
        ),
        (
            "postgresql://u@h/db?sslmode=disable&options=-c%20work_mem%3D4MB",
            "postgresql://u@h/db?sslmode=disable&options=-c%20work_mem%3D4MB%20-c%20search_path%3Ds1",
        ),
    ],
)
def test_url_with_search_path(url: str, expected: str) -> None:
    assert url_with_search_path(url, "s1") == expected


def test_redact_url_hides_the_password() -> None:
    assert redact_url("postgresql://alice:s3cret@db:5432/x") == "postgresql://alice:***@db:5432/x"
    assert redact_url("postgresql://alice@db/x") == "postgresql://alice@db/x"
