"""tools.movielens on the real MovieLens-100K (docs/data.md).

The data is fetched once per session into the user's cache (``$LOCALRANK_DATA_DIR``, else the XDG
cache); later sessions read it from there. These tests never fall back to other data: when the
data cannot be fetched they fail, with the loader's message saying why.

The facts asserted below were read off the data and cross-checked with GroupLens' README and
``u.item`` lines quoted verbatim (``ORIGINAL_ITEM_LINES``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import shutil
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from tools.movielens import (
    GENRES,
    RECBOLE_FILES,
    RECBOLE_SHA256,
    YEAR_UNKNOWN,
    MovieLens100K,
    default_cache_dir,
    fetch_movielens_100k,
    load_grouplens,
    load_movielens_100k,
    load_recbole,
)

from localrank.errors import DataUnavailableError, InputError, LocalrankError

UNREACHABLE_INDEX = "http://127.0.0.1:9/simple/"


@pytest.fixture
def offline_pip(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """pip pointed at an index where nothing listens, with no cache or config to fall back on."""
    monkeypatch.setenv("PIP_INDEX_URL", UNREACHABLE_INDEX)
    monkeypatch.setenv("PIP_CACHE_DIR", str(tmp_path / "pip-cache"))
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")
    for name in ("PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PIP_NO_INDEX"):
        monkeypatch.delenv(name, raising=False)


# --- the data itself ----------------------------------------------------------------------------


def test_cached_files_have_the_pinned_checksums(cache_dir: Path) -> None:
    assert sorted(RECBOLE_FILES) == ["ml-100k.inter", "ml-100k.item", "ml-100k.user"]
    for name in RECBOLE_FILES:
        digest = hashlib.sha256((cache_dir / name).read_bytes()).hexdigest()
        assert digest == RECBOLE_SHA256[name], name


def test_sizes(ml100k: MovieLens100K) -> None:
    assert len(ml100k.ratings) == 100_000
    assert len(ml100k.items) == 1682
    assert len(ml100k.users) == 943
    assert ml100k.genres == GENRES
    assert len(GENRES) == 19
    # Ids are 1..n with no gaps, so id - 1 is a row index.
    assert np.array_equal(ml100k.items.id, np.arange(1, 1683))
    assert np.array_equal(ml100k.users.id, np.arange(1, 944))


def test_dtypes(ml100k: MovieLens100K) -> None:
    r = ml100k.ratings
    assert (r.user.dtype, r.item.dtype, r.rating.dtype, r.timestamp.dtype) == (
        np.int32,
        np.int32,
        np.int8,
        np.int64,
    )
    assert ml100k.items.year.dtype == np.int16
    assert ml100k.users.age.dtype == np.int16


def test_known_items(ml100k: MovieLens100K) -> None:
    items = ml100k.items
    assert items.title[0] == "Toy Story (1995)"
    assert items.genres[0] == ("Animation", "Children's", "Comedy")
    assert items.year[0] == 1995
    assert items.title[49] == "Star Wars (1977)"
    assert items.genres[49] == ("Action", "Adventure", "Romance", "Sci-Fi", "War")
    # GroupLens' item 267 has no title or date; RecBole spells it "unkonwn".
    assert items.title[266] == "unknown"
    assert items.genres[266] == ("unknown",)
    assert items.year[266] == YEAR_UNKNOWN
    # The year is the title's, not the last parenthesised text.
    assert items.title[1411] == "Land Before Time III: The Time of the Great Giving (1995) (V)"
    assert items.year[1411] == 1995
    assert items.title[542] == "Misérables, Les (1995)"
    assert int(items.year[items.year != YEAR_UNKNOWN].min()) == 1922
    assert int(items.year.max()) == 1998


def test_genre_counts(ml100k: MovieLens100K) -> None:
    counts = dict(zip(GENRES, ml100k.items.genre_matrix().sum(axis=0).tolist(), strict=True))
    assert counts["Drama"] == 725
    assert counts["Comedy"] == 505
    assert counts["Action"] == counts["Thriller"] == 251
    assert counts["unknown"] == 2
    assert counts["Fantasy"] == 22
    # Every movie has at least one genre, and genres follow GENRES' order.
    assert all(ml100k.items.genres)
    for names in ml100k.items.genres:
        assert list(names) == sorted(names, key=GENRES.index)


def test_known_users(ml100k: MovieLens100K) -> None:
    u = ml100k.users
    assert (u.age[0], u.gender[0], u.occupation[0], u.zip_code[0]) == (
        24,
        "M",
        "technician",
        "85711",
    )
    assert (u.age[942], u.gender[942], u.occupation[942], u.zip_code[942]) == (
        22,
        "M",
        "student",
        "77841",
    )
    assert Counter(u.gender) == {"M": 670, "F": 273}
    assert len(set(u.occupation)) == 21
    assert (int(u.age.min()), int(u.age.max())) == (7, 73)
    # Canadian postal codes stay strings.
    assert "T8H1N" in u.zip_code


def test_ratings(ml100k: MovieLens100K) -> None:
    r = ml100k.ratings
    assert np.bincount(r.rating, minlength=6)[1:].tolist() == [6110, 11370, 27145, 34174, 21201]
    assert r.rating.mean() == pytest.approx(3.52986)
    # The first lines of u.data, in file order.
    assert r.user[:4].tolist() == [196, 186, 22, 244]
    assert r.item[:4].tolist() == [242, 302, 377, 51]
    assert r.timestamp[:2].tolist() == [881250949, 891717742]
    # One rating per (user, item); every user rated at least 20 movies (GroupLens' README).
    assert len(set(zip(r.user.tolist(), r.item.tolist(), strict=True))) == 100_000
    per_user = np.bincount(r.user)[1:]
    assert per_user.min() == 20
    assert per_user.max() == 737
    per_item = np.bincount(r.item, minlength=1683)[1:]
    assert per_item.min() == 1
    assert int(per_item.argmax()) + 1 == 50  # Star Wars, the most rated
    assert per_item[49] == 583


def test_timestamps_span_the_collection_period(ml100k: MovieLens100K) -> None:
    """GroupLens: collected from September 19th, 1997 through April 22nd, 1998 (US time)."""
    first = dt.datetime.fromtimestamp(int(ml100k.ratings.timestamp.min()), tz=dt.timezone.utc)
    last = dt.datetime.fromtimestamp(int(ml100k.ratings.timestamp.max()), tz=dt.timezone.utc)
    assert (
        dt.datetime(1997, 9, 19, tzinfo=dt.timezone.utc)
        < first
        < dt.datetime(1997, 9, 21, tzinfo=dt.timezone.utc)
    )
    assert last.date() == dt.date(1998, 4, 22)


# --- the GroupLens format -----------------------------------------------------------------------


def write_grouplens_from_recbole(src: Path, dst: Path) -> None:
    """Turn RecBole's three files into GroupLens' u.data, u.item (Latin-1), u.user, u.genre,
    working on the raw files (not through the loader), by undoing RecBole's conversion: the
    title gets its year back in parentheses, item 267's "unkonwn" is GroupLens' "unknown", and
    the genre names become the 19 flags. Release dates and URLs, which RecBole dropped, are
    written as a date from the year and an empty URL."""
    dst.mkdir(parents=True, exist_ok=True)

    def rows(name: str) -> tuple[list[str], list[list[str]]]:
        lines = (src / name).read_text(encoding="utf-8").splitlines()
        return [h.split(":")[0] for h in lines[0].split("\t")], [x.split("\t") for x in lines[1:]]

    header, inter = rows("ml-100k.inter")
    assert header == ["user_id", "item_id", "rating", "timestamp"]
    (dst / "u.data").write_text("".join("\t".join(r) + "\n" for r in inter), encoding="ascii")

    header, items = rows("ml-100k.item")
    assert header == ["item_id", "movie_title", "release_year", "class"]
    out = []
    for item_id, title, year, classes in items:
        if (title, year) == ("unkonwn", "unkonwn"):
            full, date = "unknown", ""
        else:
            full, date = f"{title} ({year})", (f"01-Jan-{year}" if year.isdigit() else "")
        flags = ["1" if g in classes.split(" ") else "0" for g in GENRES]
        out.append("|".join([item_id, full, date, "", "", *flags]) + "\n")
    (dst / "u.item").write_bytes("".join(out).encode("latin-1"))

    header, users = rows("ml-100k.user")
    assert header == ["user_id", "age", "gender", "occupation", "zip_code"]
    (dst / "u.user").write_text("".join("|".join(r) + "\n" for r in users), encoding="ascii")
    (dst / "u.genre").write_text("".join(f"{g}|{i}\n" for i, g in enumerate(GENRES)) + "\n")


def assert_same_dataset(a: MovieLens100K, b: MovieLens100K) -> None:
    for name in ("user", "item", "rating", "timestamp"):
        x, y = getattr(a.ratings, name), getattr(b.ratings, name)
        assert x.dtype == y.dtype and np.array_equal(x, y), f"ratings.{name}"
    for name in ("id", "year"):
        x, y = getattr(a.items, name), getattr(b.items, name)
        assert x.dtype == y.dtype and np.array_equal(x, y), f"items.{name}"
    assert a.items.title == b.items.title
    assert a.items.genres == b.items.genres
    for name in ("id", "age"):
        x, y = getattr(a.users, name), getattr(b.users, name)
        assert x.dtype == y.dtype and np.array_equal(x, y), f"users.{name}"
    assert a.users.gender == b.users.gender
    assert a.users.occupation == b.users.occupation
    assert a.users.zip_code == b.users.zip_code
    assert a.genres == b.genres


def test_grouplens_and_recbole_loaders_agree(
    cache_dir: Path, ml100k: MovieLens100K, tmp_path: Path
) -> None:
    write_grouplens_from_recbole(cache_dir, tmp_path / "ml-100k")
    # Non-ASCII titles really are Latin-1 on disk, as in GroupLens' file.
    assert "Misérables".encode("latin-1") in (tmp_path / "ml-100k" / "u.item").read_bytes()
    from_grouplens = load_grouplens(tmp_path / "ml-100k")
    assert_same_dataset(from_grouplens, ml100k)
    assert "GroupLens" in from_grouplens.source

    # The same from the zip, laid out as GroupLens ships it (ml-100k/u.data, ...).
    archive = tmp_path / "ml-100k.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for file in sorted((tmp_path / "ml-100k").iterdir()):
            z.write(file, f"ml-100k/{file.name}")
    assert_same_dataset(load_grouplens(archive), ml100k)


# Verbatim lines of GroupLens' u.item: item 10's release date is in 1996 but its title says
# 1995; item 267 has neither title nor date; item 314's title and date disagree too.
ORIGINAL_ITEM_LINES = [
    "1|Toy Story (1995)|01-Jan-1995||http://us.imdb.com/M/title-exact?Toy%20Story%20(1995)"
    "|0|0|0|1|1|1|0|0|0|0|0|0|0|0|0|0|0|0|0",
    "10|Richard III (1995)|22-Jan-1996||http://us.imdb.com/M/title-exact?Richard%20III%20(1995)"
    "|0|0|0|0|0|0|0|0|1|0|0|0|0|0|0|0|0|1|0",
    "267|unknown||||1|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0",
    "314|3 Ninjas: High Noon At Mega Mountain (1998)|01-Jan-1997||"
    "http://us.imdb.com/M/title-exact?imdb-title-118539|0|1|0|0|1|0|0|0|0|0|0|0|0|0|0|0|0|0|0",
]


def test_original_grouplens_lines_match_recbole_copy(ml100k: MovieLens100K, tmp_path: Path) -> None:
    """GroupLens' own lines, parsed by load_grouplens, give what the RecBole copy gives."""
    (tmp_path / "u.item").write_text("\n".join(ORIGINAL_ITEM_LINES) + "\n", encoding="latin-1")
    (tmp_path / "u.user").write_text("1|24|M|technician|85711\n", encoding="ascii")
    (tmp_path / "u.data").write_text("1\t1\t5\t874965758\n1\t267\t4\t875692955\n")
    small = load_grouplens(tmp_path)
    assert small.items.id.tolist() == [1, 10, 267, 314]
    for row, item_id in enumerate(small.items.id.tolist()):
        assert small.items.title[row] == ml100k.items.title[item_id - 1]
        assert small.items.genres[row] == ml100k.items.genres[item_id - 1]
        assert small.items.year[row] == ml100k.items.year[item_id - 1]
    assert small.items.year.tolist() == [1995, 1995, YEAR_UNKNOWN, 1998]
    assert small.ratings.rating.tolist() == [5, 4]


def test_grouplens_reads_latin1(tmp_path: Path) -> None:
    flags = "|".join(["0"] * 8 + ["1"] + ["0"] * 3 + ["1"] + ["0"] * 6)  # Drama, Musical
    (tmp_path / "u.item").write_bytes(
        f"543|Misérables, Les (1995)|01-Jan-1995|||{flags}\n".encode("latin-1")
    )
    (tmp_path / "u.user").write_text("7|57|M|administrator|91344\n")
    (tmp_path / "u.data").write_text("7\t543\t3\t891353000\n")
    ds = load_grouplens(tmp_path)
    assert ds.items.title == ("Misérables, Les (1995)",)
    assert ds.items.genres == (("Drama", "Musical"),)
    assert ds.items.genre_matrix()[0].nonzero()[0].tolist() == [8, 12]


GOOD_FILES = {
    "u.data": "1\t1\t3\t5\n",
    "u.item": "1|Toy Story (1995)|01-Jan-1995|||" + "|".join(["0"] * 3 + ["1"] * 3 + ["0"] * 13),
    "u.user": "1|24|M|x|1\n",
}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"u.user": None}, "has no u.user"),
        ({"u.data": "1\t1\t3\n"}, "u.data"),
        ({"u.data": "1\t1\t6\t5\n"}, "ratings must be 1-5"),
        ({"u.data": "1\t2\t3\t5\n"}, "ratings of unknown items"),
        ({"u.data": "9\t1\t3\t5\n"}, "ratings by unknown users"),
        ({"u.data": "1\tx\t3\t5\n"}, "u.data"),
        ({"u.item": "1|Toy Story (1995)|x\n"}, "u.item line 1: expected 24 fields, got 3"),
        ({"u.item": GOOD_FILES["u.item"].replace("|1|", "|2|", 1)}, "genre flags must be 0 or 1"),
        ({"u.user": "1|24|X|x|1\n"}, "gender must be M or F"),
        ({"u.user": "1|0|M|x|1\n"}, "ages must be positive"),
        ({"u.genre": "Action|0\n"}, "u.genre lists"),
    ],
)
def test_grouplens_bad_input(tmp_path: Path, changes: dict[str, str | None], message: str) -> None:
    for name, text in {**GOOD_FILES, **changes}.items():
        if text is not None:
            (tmp_path / name).write_text(text, encoding="latin-1")
    with pytest.raises(InputError, match=message):
        load_grouplens(tmp_path)


def test_grouplens_good_input_loads(tmp_path: Path) -> None:
    """The base of the table above loads: each bad case fails for its own change."""
    for name, text in GOOD_FILES.items():
        (tmp_path / name).write_text(text, encoding="latin-1")
    ds = load_grouplens(tmp_path)
    assert ds.items.genres == (("Animation", "Children's", "Comedy"),)


def test_grouplens_refuses_a_file_path(tmp_path: Path) -> None:
    (tmp_path / "u.data").write_text("")
    with pytest.raises(InputError, match=r"expected a directory or ml-100k\.zip"):
        load_grouplens(tmp_path / "u.data")


# --- the cache, checksums, and failures ---------------------------------------------------------


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LOCALRANK_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "data" / "ml-100k"
    monkeypatch.delenv("LOCALRANK_DATA_DIR")
    assert default_cache_dir() == tmp_path / "xdg" / "localrank" / "ml-100k"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/path")  # not absolute: ignored
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "localrank" / "ml-100k"


def test_unreachable_index_raises_data_unavailable(tmp_path: Path, offline_pip: None) -> None:
    empty = tmp_path / "cache"
    with pytest.raises(DataUnavailableError) as info:
        load_movielens_100k(empty)
    message = str(info.value)
    assert isinstance(info.value, LocalrankError)
    # What was tried ...
    assert "recbole==1.2.1" in message
    assert "pip download" in message
    assert "exited with status" in message
    assert "127.0.0.1" in message  # pip's own account of the index it could not reach
    assert str(empty) in message
    assert "ml-100k.inter is missing" in message
    # ... and how to provide the files by hand.
    assert "recbole/dataset_example/ml-100k/" in message
    assert "LOCALRANK_DATA_DIR" in message
    assert "load_grouplens" in message
    # Nothing half-written is left behind.
    assert not empty.exists() or not any(empty.iterdir())


def test_fetch_false_never_downloads(tmp_path: Path) -> None:
    with pytest.raises(DataUnavailableError, match="fetching was not allowed"):
        load_movielens_100k(tmp_path, fetch=False)


def _corrupt_copy(cache_dir: Path, dst: Path) -> Path:
    dst.mkdir()
    for name in RECBOLE_FILES:
        shutil.copyfile(cache_dir / name, dst / name)
    user = dst / "ml-100k.user"
    # Same shape, one changed zip code: it still parses, only the checksum can tell.
    user.write_bytes(user.read_bytes().replace(b"\t85711\n", b"\t85712\n", 1))
    return dst


def test_load_recbole_refuses_files_that_fail_the_checksum(cache_dir: Path, tmp_path: Path) -> None:
    bad = _corrupt_copy(cache_dir, tmp_path / "bad")
    with pytest.raises(
        DataUnavailableError, match=r"ml-100k.user has SHA-256 [0-9a-f]{64}, expected"
    ):
        load_recbole(bad)
    # The checksum is what refused it: unchecked, the same files load, with the change.
    assert load_recbole(bad, verify_checksums=False).users.zip_code[0] == "85712"


def test_corrupt_cache_without_network_is_reported(
    cache_dir: Path, tmp_path: Path, offline_pip: None
) -> None:
    bad = _corrupt_copy(cache_dir, tmp_path / "bad")
    actual = hashlib.sha256((bad / "ml-100k.user").read_bytes()).hexdigest()
    with (
        pytest.warns(RuntimeWarning, match="ml-100k.user has SHA-256"),
        pytest.raises(DataUnavailableError) as info,
    ):
        load_movielens_100k(bad)
    assert f"ml-100k.user has SHA-256 {actual}, expected" in str(info.value)
    assert "recbole==1.2.1" in str(info.value)


def test_corrupt_cache_is_fetched_again(
    cache_dir: Path, ml100k: MovieLens100K, tmp_path: Path
) -> None:
    bad = _corrupt_copy(cache_dir, tmp_path / "bad")
    with pytest.warns(RuntimeWarning, match="fetching it again"):
        repaired = load_movielens_100k(bad)
    assert repaired.users.zip_code[0] == "85711"
    assert (
        hashlib.sha256((bad / "ml-100k.user").read_bytes()).hexdigest()
        == RECBOLE_SHA256["ml-100k.user"]
    )
    assert_same_dataset(repaired, ml100k)


def test_intact_cache_needs_no_network(cache_dir: Path, tmp_path: Path, offline_pip: None) -> None:
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in RECBOLE_FILES:
        shutil.copyfile(cache_dir / name, copy / name)
    assert fetch_movielens_100k(copy) == copy
    assert len(load_movielens_100k(copy).ratings) == 100_000


def test_fetched_wheel_that_fails_the_checksum_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stands in for a tampered or different wheel: the pin no longer matches what pip gets."""
    import tools.movielens as movielens

    monkeypatch.setitem(movielens.RECBOLE_SHA256, "ml-100k.item", "0" * 64)
    target = tmp_path / "cache"
    with pytest.raises(DataUnavailableError, match="does not hold the pinned") as info:
        fetch_movielens_100k(target)
    real = "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532"
    assert f"ml-100k.item has SHA-256 {real}, expected {'0' * 64}" in str(info.value)
    # Nothing is written from a wheel that failed the check, not even the files that passed.
    assert not target.exists() or not any(target.iterdir())
