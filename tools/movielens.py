"""MovieLens-100K: 100,000 ratings (1-5) by 943 users of 1,682 movies, with the users'
demographics and the movies' titles and genres (F. M. Harper and J. A. Konstan, "The MovieLens
Datasets: History and Context", ACM TiiS 5(4), 2015). docs/data.md has the provenance, the
checksums and the licence note: the data set is for research use.

Two sources give the same in-memory :class:`MovieLens100K`:

- :func:`load_movielens_100k` reads the copy that the RecBole wheel on PyPI ships
  (``recbole==1.2.1``, ``recbole/dataset_example/ml-100k/ml-100k.{inter,item,user}``). The first
  call fetches the wheel with ``python -m pip download`` (the running interpreter's pip, so
  pip's own configuration, index and proxy apply), keeps the three files in a cache directory and
  verifies their SHA-256 against the values pinned here, on every read.
- :func:`load_grouplens` reads GroupLens' own distribution from a directory (or the
  ``ml-100k.zip``): ``u.data``, ``u.item``, ``u.user``.

The cache directory is, in order: the ``cache_dir`` argument, ``$LOCALRANK_DATA_DIR/ml-100k``,
``$XDG_CACHE_HOME/localrank/ml-100k``, ``~/.cache/localrank/ml-100k``.

RecBole's copy is GroupLens' with two changes, which the RecBole reader undoes so that both
sources agree exactly: each title is split into the title and the text of its last parentheses
(``Toy Story (1995)`` becomes ``Toy Story`` and ``1995``), and item 267, which GroupLens calls
``unknown`` with no date, is spelt ``unkonwn``. Release dates and IMDb URLs are not in RecBole's
copy, so they are in neither. The release year here is the year in the title, the one both
sources carry (it differs from the release date's year for a few movies).
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import subprocess
import sys
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import numpy.typing as npt

from localrank.errors import DataUnavailableError, InputError

__all__ = [
    "CACHE_ENV",
    "GENRES",
    "RECBOLE_FILES",
    "RECBOLE_REQUIREMENT",
    "RECBOLE_SHA256",
    "YEAR_UNKNOWN",
    "Items",
    "MovieLens100K",
    "Ratings",
    "Users",
    "default_cache_dir",
    "fetch_movielens_100k",
    "load_grouplens",
    "load_movielens_100k",
    "load_recbole",
]

IntT = TypeVar("IntT", bound=np.integer)

#: The environment variable naming a directory for localrank's data sets (``<it>/ml-100k``).
CACHE_ENV = "LOCALRANK_DATA_DIR"

#: What pip fetches, and where the three files are inside the wheel.
RECBOLE_REQUIREMENT = "recbole==1.2.1"
_WHEEL_GLOB = "recbole-1.2.1-*.whl"
_WHEEL_DIR = "recbole/dataset_example/ml-100k"

#: SHA-256 of each file as the recbole 1.2.1 wheel ships it.
RECBOLE_SHA256: dict[str, str] = {
    "ml-100k.inter": "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
    "ml-100k.item": "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532",
    "ml-100k.user": "4f670007d9cfbeb9807e757209af1555b9bcc186bde25e767f67cb67c6dd5972",
}
RECBOLE_FILES: tuple[str, ...] = tuple(RECBOLE_SHA256)

#: The 19 genres, in the order of GroupLens' ``u.genre`` and of the flags in ``u.item``.
GENRES: tuple[str, ...] = (
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)
_GENRE_INDEX = {name: i for i, name in enumerate(GENRES)}

#: The release year of a movie whose title carries none (item 267, "unknown").
YEAR_UNKNOWN = -1

# The year in a title: the last "(dddd)". Item 1412 ends in "(1995) (V)".
_TITLE_YEAR = re.compile(r"\((\d{4})\)")

# RecBole's spelling of GroupLens' item 267, title "unknown" with no date.
_RECBOLE_UNKNOWN = "unkonwn"


@dataclass(frozen=True, eq=False)
class Ratings:
    """One row per rating, in the order of the source file (``u.data``, ``ml-100k.inter``)."""

    user: npt.NDArray[np.int32]
    item: npt.NDArray[np.int32]
    rating: npt.NDArray[np.int8]
    #: Seconds since the Unix epoch, UTC.
    timestamp: npt.NDArray[np.int64]

    def __len__(self) -> int:
        return int(self.user.shape[0])


@dataclass(frozen=True, eq=False)
class Items:
    """One row per movie, in ascending id order."""

    id: npt.NDArray[np.int32]
    #: GroupLens' title, with the year: ``"Toy Story (1995)"``.
    title: tuple[str, ...]
    #: Each movie's genres, in the order of :data:`GENRES`.
    genres: tuple[tuple[str, ...], ...]
    #: The year in the title, or :data:`YEAR_UNKNOWN`.
    year: npt.NDArray[np.int16]

    def __len__(self) -> int:
        return int(self.id.shape[0])

    def genre_matrix(self) -> npt.NDArray[np.bool_]:
        """A ``(n_items, len(GENRES))`` boolean matrix: row i flags item i's genres."""
        out = np.zeros((len(self), len(GENRES)), dtype=np.bool_)
        for row, names in enumerate(self.genres):
            for name in names:
                out[row, _GENRE_INDEX[name]] = True
        return out


@dataclass(frozen=True, eq=False)
class Users:
    """One row per user, in ascending id order."""

    id: npt.NDArray[np.int32]
    age: npt.NDArray[np.int16]
    #: ``"M"`` or ``"F"``.
    gender: tuple[str, ...]
    occupation: tuple[str, ...]
    #: As given: mostly five-digit US ZIP codes, a few Canadian postal codes.
    zip_code: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.id.shape[0])


@dataclass(frozen=True, eq=False)
class MovieLens100K:
    """The data set in memory. Both loaders return this, with identical contents."""

    ratings: Ratings
    items: Items
    users: Users
    #: The genre names, in the order of GroupLens' flags.
    genres: tuple[str, ...]
    #: Where it was read from, for messages.
    source: str


# --- locations and checksums ------------------------------------------------------------------


def default_cache_dir() -> Path:
    """Where the RecBole files are cached when no directory is given: ``$LOCALRANK_DATA_DIR/
    ml-100k``, else ``$XDG_CACHE_HOME/localrank/ml-100k``, else ``~/.cache/localrank/ml-100k``
    (an XDG_CACHE_HOME that is not absolute is ignored, as the XDG spec says)."""
    override = os.environ.get(CACHE_ENV, "").strip()
    if override:
        return Path(override).expanduser() / "ml-100k"
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "localrank" / "ml-100k"


def _resolve_dir(cache_dir: str | os.PathLike[str] | None) -> Path:
    return Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _cache_problems(directory: Path) -> list[str]:
    """What is wrong with the cached copy in ``directory``: nothing when all three files are
    there with the pinned checksums."""
    problems = []
    for name, expected in RECBOLE_SHA256.items():
        path = directory / name
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            problems.append(f"{name} is missing")
            continue
        except OSError as exc:
            problems.append(f"{name} cannot be read ({exc})")
            continue
        actual = _sha256(data)
        if actual != expected:
            problems.append(f"{name} has SHA-256 {actual}, expected {expected}")
    return problems


def _manual_instructions(directory: Path) -> str:
    return (
        "To provide the data by hand, either copy ml-100k.inter, ml-100k.item and ml-100k.user "
        f"from the {RECBOLE_REQUIREMENT} wheel (inside it, {_WHEEL_DIR}/; "
        f"`pip download {RECBOLE_REQUIREMENT} --no-deps` on a machine that reaches PyPI, then "
        f"unzip the .whl) into {directory} (or into $LOCALRANK_DATA_DIR/ml-100k, or pass "
        "cache_dir=), or download GroupLens' ml-100k.zip and read it with "
        "tools.movielens.load_grouplens(path)."
    )


# --- fetching ---------------------------------------------------------------------------------


def _tail(text: str, lines: int = 12) -> str:
    kept = [line for line in text.strip().splitlines() if line.strip()]
    return "\n".join("    " + line for line in kept[-lines:])


def _download_recbole_files(timeout: float) -> dict[str, bytes]:
    """The three files from the recbole wheel, fetched by pip into a temporary directory and
    checked against the pinned checksums."""
    with tempfile.TemporaryDirectory(prefix="localrank-recbole-") as tmp:
        cmd = [
            sys.executable, "-m", "pip", "download", RECBOLE_REQUIREMENT,
            "--no-deps", "--only-binary=:all:", "--dest", tmp,
            "--disable-pip-version-check", "--no-input", "--retries", "2", "--timeout", "20",
        ]  # fmt: skip
        shown = " ".join(["python -m pip", *cmd[3:5], "--no-deps", "--only-binary=:all:"])
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            raise DataUnavailableError(f"`{shown}` did not finish within {timeout:g} s") from exc
        except OSError as exc:
            raise DataUnavailableError(f"`{shown}` could not be started: {exc}") from exc
        if proc.returncode != 0:
            raise DataUnavailableError(
                f"`{shown}` (with {sys.executable}) exited with status {proc.returncode}:\n"
                f"{_tail(proc.stderr or proc.stdout)}"
            )
        wheels = sorted(Path(tmp).glob(_WHEEL_GLOB))
        if len(wheels) != 1:
            found = sorted(p.name for p in Path(tmp).iterdir())
            raise DataUnavailableError(
                f"`{shown}` succeeded but left {found} instead of one {_WHEEL_GLOB}"
            )
        files: dict[str, bytes] = {}
        try:
            with zipfile.ZipFile(wheels[0]) as wheel:
                for name in RECBOLE_FILES:
                    files[name] = wheel.read(f"{_WHEEL_DIR}/{name}")
        except (zipfile.BadZipFile, KeyError, OSError) as exc:
            raise DataUnavailableError(
                f"{wheels[0].name} is not a wheel holding {_WHEEL_DIR}/: {exc}"
            ) from exc
    bad = [
        f"{name} has SHA-256 {_sha256(data)}, expected {RECBOLE_SHA256[name]}"
        for name, data in files.items()
        if _sha256(data) != RECBOLE_SHA256[name]
    ]
    if bad:
        raise DataUnavailableError(
            f"the {RECBOLE_REQUIREMENT} wheel that pip fetched does not hold the pinned "
            f"MovieLens-100K files: {'; '.join(bad)}"
        )
    return files


def _write_atomically(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp makes the file 0600; a cache file is as readable as any other.
        os.chmod(tmp, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def fetch_movielens_100k(
    cache_dir: str | os.PathLike[str] | None = None, *, timeout: float = 300.0
) -> Path:
    """Make sure the cache holds the three RecBole files, intact, and return its directory.

    A cache whose files are all present with the pinned SHA-256 is used as it is, without any
    network access. Otherwise the recbole wheel is fetched with the running interpreter's pip
    (at most ``timeout`` seconds), the three files are taken from it, checked, and written
    (each atomically); a corrupt cached file is replaced, with a :class:`RuntimeWarning`.

    Raises:
        DataUnavailableError: the files are not cached intact and fetching them failed, or
            what was fetched does not match the checksums. The message says what was tried
            and how to provide the files by hand.
    """
    directory = _resolve_dir(cache_dir)
    problems = _cache_problems(directory)
    if not problems:
        return directory
    corrupt = [p for p in problems if "is missing" not in p]
    if corrupt:
        warnings.warn(
            f"MovieLens-100K cache {directory}: {'; '.join(corrupt)}; fetching it again",
            RuntimeWarning,
            stacklevel=2,
        )
    try:
        files = _download_recbole_files(timeout)
    except DataUnavailableError as exc:
        raise DataUnavailableError(
            f"MovieLens-100K is not available. The cache {directory} has no usable copy "
            f"({'; '.join(problems)}), and fetching {RECBOLE_REQUIREMENT} from the package "
            f"index failed: {exc}\n{_manual_instructions(directory)}"
        ) from exc
    try:
        directory.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            _write_atomically(directory / name, data)
    except OSError as exc:
        raise DataUnavailableError(
            f"MovieLens-100K was fetched but cannot be written to {directory}: {exc}. "
            f"Choose another directory with cache_dir= or ${CACHE_ENV}."
        ) from exc
    return directory


# --- parsing ----------------------------------------------------------------------------------


def _narrow(values: npt.NDArray[np.int64], dtype: type[IntT], where: str) -> npt.NDArray[IntT]:
    info = np.iinfo(dtype)
    if values.size and (values.min() < info.min or values.max() > info.max):
        raise InputError(f"{where}: values out of range for {np.dtype(dtype).name}")
    return values.astype(dtype)


def _int_array(values: Sequence[str], dtype: type[IntT], where: str) -> npt.NDArray[IntT]:
    try:
        wide = np.array([int(v) for v in values], dtype=np.int64)
    except ValueError as exc:
        raise InputError(f"{where}: expected integers ({exc})") from exc
    return _narrow(wide, dtype, where)


def _year_from_title(title: str) -> int:
    found = _TITLE_YEAR.findall(title)
    return int(found[-1]) if found else YEAR_UNKNOWN


def _split_lines(text: str, sep: str, fields: int, where: str) -> list[list[str]]:
    rows = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split(sep)
        if len(parts) != fields:
            raise InputError(f"{where} line {n}: expected {fields} fields, got {len(parts)}")
        rows.append(parts)
    return rows


def _int_table(
    text: str, columns: Sequence[int], skip_header: bool, where: str
) -> npt.NDArray[np.int64]:
    """The integer ``columns`` of a tab-separated file, as an ``(n, len(columns))`` array."""
    try:
        table: npt.NDArray[np.int64] = np.loadtxt(
            io.StringIO(text),
            dtype=np.int64,
            delimiter="\t",
            skiprows=1 if skip_header else 0,
            usecols=tuple(columns),
            ndmin=2,
        )
    except ValueError as exc:
        raise InputError(f"{where}: {exc}") from exc
    return table


def _build(
    ratings_table: npt.NDArray[np.int64],
    item_rows: list[tuple[str, str, tuple[str, ...]]],
    user_rows: list[list[str]],
    source: str,
    where: tuple[str, str, str],
) -> MovieLens100K:
    """Typed arrays from the parsed rows, checked for consistency. ``ratings_table`` has the
    columns user, item, rating, timestamp."""
    where_ratings, where_items, where_users = where
    if len(ratings_table) == 0 or not item_rows or not user_rows:
        raise InputError(f"{source}: ratings, items and users must all be non-empty")
    ratings = Ratings(
        user=_narrow(ratings_table[:, 0], np.int32, f"{where_ratings} user ids"),
        item=_narrow(ratings_table[:, 1], np.int32, f"{where_ratings} item ids"),
        rating=_narrow(ratings_table[:, 2], np.int8, f"{where_ratings} ratings"),
        timestamp=np.ascontiguousarray(ratings_table[:, 3]),
    )
    if ratings.rating.min() < 1 or ratings.rating.max() > 5:
        raise InputError(f"{where_ratings}: ratings must be 1-5")

    item_ids = _int_array([r[0] for r in item_rows], np.int32, f"{where_items} ids")
    order = np.argsort(item_ids, kind="stable")
    titles = tuple(item_rows[i][1] for i in order)
    items = Items(
        id=item_ids[order],
        title=titles,
        genres=tuple(item_rows[i][2] for i in order),
        year=np.array([_year_from_title(t) for t in titles], dtype=np.int16),
    )

    user_ids = _int_array([r[0] for r in user_rows], np.int32, f"{where_users} ids")
    uorder = np.argsort(user_ids, kind="stable")
    users = Users(
        id=user_ids[uorder],
        age=_int_array([user_rows[i][1] for i in uorder], np.int16, f"{where_users} ages"),
        gender=tuple(user_rows[i][2] for i in uorder),
        occupation=tuple(user_rows[i][3] for i in uorder),
        zip_code=tuple(user_rows[i][4] for i in uorder),
    )

    for ids, where_ids in ((items.id, where_items), (users.id, where_users)):
        if np.any(np.diff(ids) == 0):
            raise InputError(f"{where_ids}: duplicate ids")
    if not set(users.gender) <= {"M", "F"}:
        raise InputError(f"{where_users}: gender must be M or F, got {sorted(set(users.gender))}")
    if users.age.min() <= 0:
        raise InputError(f"{where_users}: ages must be positive")
    unknown_users = np.setdiff1d(ratings.user, users.id)
    if unknown_users.size:
        raise InputError(f"{where_ratings}: ratings by unknown users {unknown_users[:5]}")
    unknown_items = np.setdiff1d(ratings.item, items.id)
    if unknown_items.size:
        raise InputError(f"{where_ratings}: ratings of unknown items {unknown_items[:5]}")
    return MovieLens100K(ratings=ratings, items=items, users=users, genres=GENRES, source=source)


def _atomic_table(text: str, wanted: Sequence[str], where: str) -> list[list[str]]:
    """The ``wanted`` columns of a RecBole atomic file (tab-separated, with a header of
    ``name:type`` fields), in that order."""
    lines = text.splitlines()
    if not lines:
        raise InputError(f"{where}: empty file")
    header = [field.split(":", 1)[0] for field in lines[0].split("\t")]
    missing = [name for name in wanted if name not in header]
    if missing:
        raise InputError(f"{where}: no column {missing} in the header {lines[0]!r}")
    index = [header.index(name) for name in wanted]
    rows = _split_lines("\n".join(lines[1:]), "\t", len(header), where)
    return [[row[i] for i in index] for row in rows]


def _recbole_genres(field: str, where: str) -> tuple[str, ...]:
    names = field.split()
    unknown = [n for n in names if n not in _GENRE_INDEX]
    if unknown or len(set(names)) != len(names):
        raise InputError(f"{where}: bad genre list {field!r}")
    return tuple(sorted(names, key=_GENRE_INDEX.__getitem__))


def load_recbole(path: str | os.PathLike[str], *, verify_checksums: bool = True) -> MovieLens100K:
    """Read RecBole's ``ml-100k.{inter,item,user}`` from the directory ``path``.

    With ``verify_checksums`` (the default) the files must match the pinned SHA-256, or
    :class:`DataUnavailableError` is raised. A file that does not parse raises
    :class:`InputError` naming the file and line.
    """
    directory = Path(path)
    data: dict[str, str] = {}
    for name in RECBOLE_FILES:
        file = directory / name
        try:
            raw = file.read_bytes()
        except OSError as exc:
            raise DataUnavailableError(
                f"cannot read {file}: {exc}\n{_manual_instructions(directory)}"
            ) from exc
        if verify_checksums and _sha256(raw) != RECBOLE_SHA256[name]:
            raise DataUnavailableError(
                f"{file} has SHA-256 {_sha256(raw)}, expected {RECBOLE_SHA256[name]}: it is not "
                "the pinned MovieLens-100K file. fetch_movielens_100k() replaces a corrupt cache."
            )
        try:
            data[name] = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InputError(f"{file}: not UTF-8 ({exc})") from exc

    inter_where, item_where, user_where = (str(directory / n) for n in RECBOLE_FILES)
    inter_text = data["ml-100k.inter"]
    inter_header = [f.split(":", 1)[0] for f in inter_text.split("\n", 1)[0].split("\t")]
    wanted = ("user_id", "item_id", "rating", "timestamp")
    if not set(wanted) <= set(inter_header):
        raise InputError(f"{inter_where}: the header {inter_header} lacks one of {list(wanted)}")
    ratings_table = _int_table(
        inter_text, [inter_header.index(c) for c in wanted], True, inter_where
    )
    item_rows = []
    for item_id, title, year, genres in _atomic_table(
        data["ml-100k.item"], ("item_id", "movie_title", "release_year", "class"), item_where
    ):
        if title == _RECBOLE_UNKNOWN and year == _RECBOLE_UNKNOWN:
            full_title = "unknown"
        else:
            full_title = f"{title} ({year})"
        item_rows.append((item_id, full_title, _recbole_genres(genres, item_where)))
    user_rows = _atomic_table(
        data["ml-100k.user"], ("user_id", "age", "gender", "occupation", "zip_code"), user_where
    )
    return _build(
        ratings_table,
        item_rows,
        user_rows,
        source=f"RecBole's ml-100k files in {directory}",
        where=(inter_where, item_where, user_where),
    )


def load_movielens_100k(
    cache_dir: str | os.PathLike[str] | None = None, *, fetch: bool = True
) -> MovieLens100K:
    """MovieLens-100K from the cached RecBole files, fetched first when the cache lacks them
    (unless ``fetch`` is false). Checksums are verified on every read.

    Raises:
        DataUnavailableError: the data is neither cached intact nor fetchable.
    """
    directory = _resolve_dir(cache_dir)
    if fetch:
        directory = fetch_movielens_100k(directory)
    else:
        problems = _cache_problems(directory)
        if problems:
            raise DataUnavailableError(
                f"MovieLens-100K is not cached intact in {directory} ({'; '.join(problems)}) "
                f"and fetching was not allowed.\n{_manual_instructions(directory)}"
            )
    return load_recbole(directory, verify_checksums=True)


def _grouplens_reader(path: Path) -> tuple[Callable[[str], bytes | None], str]:
    """A function returning a GroupLens file's bytes (None when absent), from a directory or
    from ml-100k.zip, and a description of where."""
    if path.is_dir():

        def from_dir(name: str) -> bytes | None:
            file = path / name
            return file.read_bytes() if file.is_file() else None

        return from_dir, str(path)
    if path.is_file() and zipfile.is_zipfile(path):
        archive = zipfile.ZipFile(io.BytesIO(path.read_bytes()))
        members = {Path(m).name: m for m in archive.namelist() if not m.endswith("/")}

        def from_zip(name: str) -> bytes | None:
            member = members.get(name)
            return archive.read(member) if member is not None else None

        return from_zip, str(path)
    raise InputError(f"path: expected a directory or ml-100k.zip, got {path}")


def load_grouplens(path: str | os.PathLike[str]) -> MovieLens100K:
    """Read GroupLens' own MovieLens-100K from ``path``: a directory holding ``u.data``,
    ``u.item`` and ``u.user``, or the ``ml-100k.zip`` that holds them.

    ``u.item`` is Latin-1 with 24 ``|``-separated fields (id, title, release date, video release
    date, IMDb URL, then the 19 genre flags of :data:`GENRES`). ``u.genre``, when present, must
    list :data:`GENRES`. Raises :class:`InputError` naming the file and line when a file is
    missing or does not parse.
    """
    read, where = _grouplens_reader(Path(path))
    texts: dict[str, str] = {}
    for name in ("u.data", "u.item", "u.user", "u.genre"):
        raw = read(name)
        if raw is None:
            if name == "u.genre":
                continue
            raise InputError(f"path: {where} has no {name} (expected u.data, u.item, u.user)")
        texts[name] = raw.decode("latin-1")

    if "u.genre" in texts:
        listed = [r[0] for r in _split_lines(texts["u.genre"], "|", 2, f"{where}/u.genre")]
        if tuple(listed) != GENRES:
            raise InputError(f"{where}/u.genre lists {listed}, expected {list(GENRES)}")

    w_data, w_item, w_user = (f"{where}/{n}" for n in ("u.data", "u.item", "u.user"))
    ratings_table = _int_table(texts["u.data"], range(4), False, w_data)
    item_rows = []
    for row in _split_lines(texts["u.item"], "|", 5 + len(GENRES), w_item):
        flags = row[5:]
        if not set(flags) <= {"0", "1"}:
            raise InputError(f"{w_item}: item {row[0]}: genre flags must be 0 or 1, got {flags}")
        genres = tuple(g for g, flag in zip(GENRES, flags, strict=True) if flag == "1")
        item_rows.append((row[0], row[1], genres))
    user_rows = _split_lines(texts["u.user"], "|", 5, w_user)
    return _build(
        ratings_table,
        item_rows,
        user_rows,
        source=f"GroupLens' ml-100k files in {where}",
        where=(w_data, w_item, w_user),
    )
