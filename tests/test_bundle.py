"""The signed bundle, device side: every refusal keeps the last good bundle, building is
deterministic, and a new bundle rebuilds the profile it invalidates."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import sys
import zipfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tools.demo_catalog import write_models

from engine_fixtures import (
    ALL,
    DAY,
    HOUR,
    T0,
    TAXONOMY,
    Keys,
    catalog,
    config,
    ids,
    offers,
    open_engine,
)
from localrank.bundle import build_bundle, open_bundle
from localrank.bundle.container import _HEADER, seal
from localrank.bundle.keys import load_private_key
from localrank.device.engine import Engine
from localrank.errors import (
    BundleError,
    BundleExpiredError,
    BundleFormatError,
    BundleFromFutureError,
    BundleRollbackError,
    BundleSignatureError,
    BundleTruncatedError,
    BundleUnsignedError,
    InputError,
)
from localrank.shared.clock import FixedClock
from localrank.shared.taxonomy import Category, Taxonomy

MODELS = Path(__file__).resolve().parent.parent / "models"


@pytest.fixture(scope="module")
def other_keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    return Keys(tmp_path_factory.mktemp("other"), "other")


def payload_end(data: bytes) -> int:
    return _HEADER.size + _HEADER.unpack_from(data)[3]


def resigned(
    data: bytes,
    keys: Keys,
    *,
    format_version: int = 1,
    manifest_edit: Callable[[dict[str, Any]], None] | None = None,
    arrays_edit: Callable[[dict[str, np.ndarray]], None] | None = None,
) -> bytes:
    """The payload of ``data``, optionally edited, sealed again with ``keys``: a validly
    signed bundle, as a buggy (or older) server could publish it."""
    payload = data[_HEADER.size : payload_end(data)]
    if manifest_edit is not None or arrays_edit is not None:
        src = zipfile.ZipFile(io.BytesIO(payload))
        files = {info.filename: src.read(info.filename) for info in src.infolist()}
        manifest = json.loads(files["manifest.json"])
        if manifest_edit is not None:
            manifest_edit(manifest)
        if arrays_edit is not None:
            arrays = {
                name: np.load(io.BytesIO(files[f"{name}.npy"]), allow_pickle=False)
                for name in manifest["arrays"]
            }
            arrays_edit(arrays)
            for name, arr in arrays.items():
                buf = io.BytesIO()
                np.save(buf, arr, allow_pickle=False)
                files[f"{name}.npy"] = buf.getvalue()
                manifest["arrays"][name] = {"dtype": arr.dtype.str, "shape": list(arr.shape)}
        files["manifest.json"] = json.dumps(manifest, sort_keys=True).encode()
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as dst:
            for name in sorted(files):
                dst.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), files[name])
        payload = out.getvalue()
    key = load_private_key(keys.private.read_bytes())
    return seal(payload, key, format_version=format_version)


def flipped(data: bytes, at: int) -> bytes:
    b = bytearray(data)
    b[at] ^= 0x40
    return bytes(b)


def refusals(keys: Keys, other_keys: Keys) -> list[tuple[str, type[BundleError], str, bytes]]:
    """(name, exception, message pattern, bytes) for every way a bundle is refused."""
    good = keys.bundle(version=2)
    end = payload_end(good)
    cases: list[tuple[str, type[BundleError], str, bytes]] = [
        ("other key", BundleSignatureError, "bad signature", other_keys.bundle(version=2)),
        (
            "flipped signature byte",
            BundleSignatureError,
            "bad signature",
            flipped(good, len(good) - 5),
        ),
        ("unsigned", BundleUnsignedError, "unsigned", good[:end]),
        (
            "expired",
            BundleExpiredError,
            "expired",
            keys.bundle(version=2, created=T0 - 10 * DAY, expires=T0 - DAY),
        ),
        (
            "created a year in the future",
            BundleFromFutureError,
            "created in the future",
            keys.bundle(version=2, created=T0 + 365 * DAY, expires=T0 + 400 * DAY),
        ),
        (
            "unknown container format",
            BundleFormatError,
            "unknown format version 2",
            resigned(good, keys, format_version=2),
        ),
        (
            "unknown manifest format",
            BundleFormatError,
            "unknown manifest format 2",
            resigned(good, keys, manifest_edit=lambda m: m.update(format=2)),
        ),
        ("not a bundle", BundleFormatError, "not a localrank bundle", b"PK\x03\x04" + good[4:]),
        ("empty", BundleFormatError, "not a localrank bundle", b""),
        ("trailing garbage", BundleFormatError, "malformed signature trailer", good + b"\x00"),
    ]
    for at in (_HEADER.size, _HEADER.size + 1000, end // 2, end - 1):
        cases.append(
            (f"payload byte {at} flipped", BundleSignatureError, "bad signature", flipped(good, at))
        )
    for cut in (
        1,
        8,
        12,
        _HEADER.size - 1,
        _HEADER.size,
        _HEADER.size + 1,
        end // 2,
        end - 1,
        end + 1,
        end + 4,
        len(good) - 1,
    ):
        cases.append((f"truncated at {cut}", BundleTruncatedError, "truncated", good[:cut]))
    return cases


def test_every_refusal_keeps_the_last_good_bundle(tmp_path: Path, keys, other_keys):
    first = keys.bundle(version=1)
    engine, clock = open_engine(tmp_path / "device.db", keys, first)
    engine.record("purchase", context="shopping", offer="o-sci-fi-0", now=T0 - HOUR)
    good_digest = engine.bundle.digest
    expected = ids(engine.recommend("shopping", k=ALL))
    cases = refusals(keys, other_keys)
    for name, error, pattern, data in cases:
        with pytest.raises(error, match=pattern) as info:
            engine.load_bundle(data)
        assert str(info.value).startswith("bundle: "), name
        # the last good bundle stays in use, here and after a restart
        assert engine.bundle.digest == good_digest, name
        assert engine.bundle.version == 1
        assert ids(engine.recommend("shopping", k=ALL)) == expected, name
    # and from a file too
    bad = tmp_path / "bad.bundle"
    bad.write_bytes(cases[0][3])
    with pytest.raises(BundleSignatureError):
        engine.load_bundle(bad)
    engine.close()
    again, _ = open_engine(tmp_path / "device.db", keys, None, clock=clock)
    assert again.bundle.digest == good_digest
    assert ids(again.recommend("shopping", k=ALL)) == expected
    # control: the good variant of those bundles is accepted
    assert again.load_bundle(keys.bundle(version=2)).version == 2


def test_open_bundle_refuses_without_an_engine(keys, other_keys):
    for name, error, pattern, data in refusals(keys, other_keys):
        with pytest.raises(error, match=pattern):
            open_bundle(data, keys.public, now=T0)
        assert issubclass(error, BundleError), name


def test_a_verified_bundle_is_not_a_pass_for_near_copies_or_other_keys(keys, other_keys):
    """Bytes that verified once are not verified again in this process; only identical bytes
    under the same key skip the check, so a same-length forgery or another key still fails."""
    good = keys.bundle(version=2)
    assert open_bundle(good, keys.public, now=T0).version == 2
    assert open_bundle(bytes(bytearray(good)), keys.public, now=T0).version == 2  # a copy
    for at in (_HEADER.size + 1000, len(good) - 5):
        with pytest.raises(BundleSignatureError, match="bad signature"):
            open_bundle(flipped(good, at), keys.public, now=T0)
    with pytest.raises(BundleSignatureError, match="bad signature"):
        open_bundle(good, other_keys.public, now=T0)
    # expiry is still checked on every call
    with pytest.raises(BundleExpiredError, match="expired"):
        open_bundle(good, keys.public, now=T0 + 10_000 * DAY)


def set_item(name: str, index: Any, value: Any) -> Callable[[dict[str, np.ndarray]], None]:
    def edit(arrays: dict[str, np.ndarray]) -> None:
        arr = arrays[name].copy()
        arr[index] = value
        arrays[name] = arr

    return edit


def replace_array(name: str, value: Any) -> Callable[[dict[str, np.ndarray]], None]:
    def edit(arrays: dict[str, np.ndarray]) -> None:
        arrays[name] = np.asarray(value)

    return edit


UNUSABLE = [
    ("a NaN embedding", set_item("offer_embeddings", (3, 2), np.nan)),
    ("an infinite bias", set_item("offer_bias", 0, np.inf)),
    ("a NaN bias", set_item("offer_bias", 5, np.nan)),
    ("a NaN prior", set_item("priors", (0, 1), np.nan)),
    ("a category outside the taxonomy", set_item("offer_category", 2, 99)),
    ("a negative category", set_item("offer_cat_indices", 0, -1)),
    ("duplicate offer ids", set_item("offer_ids", 1, "o-groceries-0")),
    ("a bias array of the wrong length", replace_array("offer_bias", np.zeros(3, np.float32))),
    ("a broken category index", replace_array("offer_cat_indptr", np.zeros(4, np.int32))),
    (
        "a local offer without a radius",
        lambda a: set_item(
            "offer_radius_km", int(np.flatnonzero(a["offer_ids"] == "o-local-cafe")[0]), np.nan
        )(a),
    ),
]


@pytest.mark.parametrize(("what", "edit"), UNUSABLE, ids=[w for w, _ in UNUSABLE])
def test_a_signed_but_unusable_bundle_is_refused(tmp_path: Path, keys, what, edit):
    """A bundle the server signed but the device cannot rank with (a server bug) is refused
    like any other bad bundle; installing it would break every recommend until the next."""
    engine, _ = open_engine(tmp_path / "device.db", keys, keys.bundle(version=1))
    expected = ids(engine.recommend("shopping", k=ALL))
    good = keys.bundle(version=2)
    assert resigned(good, keys, arrays_edit=lambda a: None) != good  # control: loads below
    with pytest.raises(BundleFormatError, match=r"^bundle: "):
        engine.load_bundle(resigned(good, keys, arrays_edit=edit))
    assert engine.bundle.version == 1
    assert ids(engine.recommend("shopping", k=ALL)) == expected
    assert engine.load_bundle(resigned(good, keys, arrays_edit=lambda a: None)).version == 2


def test_building_refuses_what_a_device_would_refuse(keys):
    bad_offers = [
        [*offers(), offers()[0]],  # duplicate id
        [*offers()[:-1], replace(offers()[-1], bias=float("inf"))],
        [*offers()[:-1], replace(offers()[-1], bias=float("nan"))],
    ]
    for offer_list in bad_offers:
        with pytest.raises(InputError):
            keys.bundle(offer_list=offer_list)
    emb = catalog().embeddings.copy()
    emb[0, 0] = np.inf
    with pytest.raises(InputError, match="embeddings"):
        keys.bundle(embeddings=emb)


def test_rollback_is_refused_also_after_a_restart(tmp_path: Path, keys):
    engine, clock = open_engine(tmp_path / "device.db", keys, keys.bundle(version=3))
    with pytest.raises(BundleRollbackError, match=r"rollback.*version 2 is older.*3"):
        engine.load_bundle(keys.bundle(version=2))
    assert engine.bundle.version == 3
    assert engine.recommend("shopping")
    # the same version again is a no-op; a newer one is taken
    assert engine.load_bundle(keys.bundle(version=3)).version == 3
    assert engine.load_bundle(keys.bundle(version=4)).version == 4
    engine.close()
    again, _ = open_engine(tmp_path / "device.db", keys, None, clock=clock)
    assert again.bundle.version == 4
    with pytest.raises(BundleRollbackError):
        again.load_bundle(keys.bundle(version=3))
    assert again.bundle.version == 4
    with pytest.raises(BundleRollbackError):
        Engine.open(
            tmp_path / "device.db",
            public_key=keys.public,
            bundle=keys.bundle(version=1),
            clock=clock,
        )


def test_an_expired_bundle_in_use_keeps_serving_until_a_new_one(tmp_path: Path, keys):
    """Expiry is checked when a bundle is loaded; the last good one keeps serving after it
    expires (nothing better is available), and a fresh one replaces it."""
    engine, clock = open_engine(tmp_path / "device.db", keys, keys.bundle(expires=T0 + DAY))
    clock.set(T0 + 2 * DAY)
    assert engine.recommend("shopping")
    engine.close()
    again, _ = open_engine(tmp_path / "device.db", keys, None, clock=clock)
    assert again.recommend("shopping")
    with pytest.raises(BundleExpiredError):
        again.load_bundle(keys.bundle(version=2, expires=T0 + DAY))
    assert again.load_bundle(keys.bundle(version=2, expires=T0 + 30 * DAY)).version == 2


def test_a_bundle_from_the_future_is_refused_beyond_the_documented_skew(tmp_path: Path, keys):
    """A device clock a few hours behind the server still takes fresh bundles; one created a
    year ahead is refused, and does not pin the device to its version."""
    from localrank.bundle.contents import MAX_CREATED_SKEW_S

    assert MAX_CREATED_SKEW_S == DAY
    engine, clock = open_engine(tmp_path / "device.db", keys, keys.bundle(version=1))
    assert engine.load_bundle(keys.bundle(version=2, created=T0 + 6 * HOUR)).version == 2
    future = keys.bundle(version=99, created=T0 + 365 * DAY, expires=T0 + 730 * DAY)
    with pytest.raises(BundleFromFutureError, match=r"^bundle: created in the future"):
        engine.load_bundle(future)
    assert engine.bundle.version == 2
    with pytest.raises(BundleFromFutureError):
        engine.load_bundle(keys.bundle(version=3, created=T0 + DAY + 60))
    assert engine.load_bundle(keys.bundle(version=3, created=T0 + DAY)).version == 3
    # A year later the same bytes are an ordinary bundle.
    clock.set(T0 + 365 * DAY)
    assert engine.load_bundle(future).version == 99


def test_a_new_server_key_does_not_lock_the_store(tmp_path: Path, keys, other_keys):
    """The app ships a new server key: the stored bundle no longer verifies, so it is not
    used, but the store (the user's data) opens and a bundle under the new key loads. The
    old bundle's version still bounds rollback."""
    db = tmp_path / "device.db"
    engine, clock = open_engine(db, keys, keys.bundle(version=5))
    eid = engine.record("click", context="shopping", offer="o-books-0", now=T0 - HOUR)
    engine.close()
    rotated = Engine.open(db, public_key=other_keys.public, clock=clock)
    assert [e.id for e in rotated.events()] == [eid]
    with pytest.raises(BundleRollbackError):
        rotated.load_bundle(other_keys.bundle(version=4))
    assert rotated.load_bundle(other_keys.bundle(version=6)).version == 6
    assert rotated.recommend("shopping")


# -- determinism -------------------------------------------------------------------------------


def test_building_is_deterministic(keys, monkeypatch):
    def build(*, reverse: bool = False, created: float = T0) -> bytes:
        extras = {"extra_a": np.arange(3), "extra_b": np.ones(2)}
        if reverse:
            extras = dict(reversed(list(extras.items())))
        return build_bundle(
            catalog=catalog(),
            taxonomy=TAXONOMY,
            config=config(),
            version=7,
            created=created,
            expires=T0 + DAY,
            signing_key=keys.private.read_bytes(),
            extras=extras,
        )

    a = build()
    assert build() == a
    assert build(reverse=True) == a  # the order things are passed in does not matter
    # nor the platform that builds it (zip entries record the creating system)
    monkeypatch.setattr(sys, "platform", "win32")
    assert build() == a
    monkeypatch.undo()
    # control: a different input gives different bytes
    assert build(created=T0 + 1) != a


def test_a_bundle_from_a_frozen_clock_is_reproducible(keys):
    clock = FixedClock(T0)

    def build() -> bytes:
        return keys.bundle(version=1, created=clock.now(), expires=clock.now() + 30 * DAY)

    assert hashlib.sha256(build()).digest() == hashlib.sha256(build()).digest()


def file_digests(directory: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.iterdir())
        if p.is_file()
    }


def test_write_models_twice_gives_identical_files(tmp_path: Path):
    write_models(tmp_path)
    first = file_digests(tmp_path)
    write_models(tmp_path)
    assert file_digests(tmp_path) == first
    assert set(first) >= {"demo.bundle", "catalog.json", "taxonomy.json", "contexts.json"}


def test_the_committed_demo_models_are_reproducible(tmp_path: Path):
    """With the committed demo key, write_models rebuilds models/ byte for byte: the demo
    bundle is exactly what the code in this tree makes."""
    for name in ("demo-key.pem", "demo-key.pub.pem"):
        shutil.copy(MODELS / name, tmp_path / name)
    written = write_models(tmp_path)
    for name in ("demo.bundle", "catalog.json", "taxonomy.json", "contexts.json"):
        assert (tmp_path / name).read_bytes() == (MODELS / name).read_bytes(), name
    bundle = open_bundle(written["bundle"].read_bytes(), MODELS / "demo-key.pub.pem", now=T0)
    assert bundle.version >= 1


# -- a new bundle and the profile --------------------------------------------------------------


def purchases(engine: Engine) -> None:
    for i in range(3):
        engine.record("purchase", context="shopping", offer=f"o-sci-fi-{i}", now=T0 - 2 * HOUR)
    for i in range(4):
        engine.record("click", context="shopping", offer=f"o-music-{i}", now=T0 - 2 * HOUR)


def learned_embeddings(seed: int = 3, d: int = 16) -> np.ndarray:
    rng = np.random.default_rng(seed)
    e = rng.standard_normal((len(offers()), d)).astype(np.float32)
    return e / np.linalg.norm(e, axis=1, keepdims=True)


def test_u_is_rebuilt_when_the_embedding_version_changes(tmp_path: Path, keys):
    v1 = keys.bundle(version=1)
    learned = learned_embeddings()
    v2 = keys.bundle(version=2, embeddings=learned, embedding_version="learned-1")
    engine, clock = open_engine(tmp_path / "a.db", keys, v1)
    purchases(engine)
    before = engine.interests("shopping")
    u1 = engine.scoring_inputs("shopping").u
    engine.recommend("shopping")
    engine.load_bundle(v2)
    u2 = engine.scoring_inputs("shopping").u
    # the interests survive: they are about categories, not the embedding space
    after = engine.interests("shopping")
    assert [c for c, _ in after] == [c for c, _ in before]
    assert [w for _, w in after] == pytest.approx([w for _, w in before])
    assert [c for c, _ in before] == ["sci-fi", "music"]
    assert not np.allclose(u1, u2)
    # u is what a device that only ever knew the new bundle computes
    fresh, _ = open_engine(tmp_path / "b.db", keys, v2, clock=FixedClock(clock.now()))
    purchases(fresh)
    np.testing.assert_allclose(u2, fresh.scoring_inputs("shopping").u, rtol=1e-5, atol=1e-6)
    # ... which lies in the new space: the weighted mean of the new embeddings of the offers
    rows = [
        engine.bundle.catalog.index_of(o)
        for o in [f"o-sci-fi-{i}" for i in range(3)] + [f"o-music-{i}" for i in range(4)]
    ]
    weights = np.array([3.0] * 3 + [1.0] * 4)
    expected = (weights[:, None] * learned[rows]).sum(axis=0) / weights.sum()
    np.testing.assert_allclose(u2, expected, rtol=1e-4, atol=1e-6)
    # and the ranking follows the new embeddings
    assert ids(engine.recommend("shopping", k=ALL)) == ids(fresh.recommend("shopping", k=ALL))


def test_a_category_newly_marked_sensitive_leaves_the_profile_at_once(tmp_path: Path, keys):
    """The server marks music sensitive (same offers, same embedding version): from the moment
    the bundle is loaded, music is no interest, no part of u, no part of the segment."""
    marked = Taxonomy(
        tuple(
            Category(c.name, sensitive=True, parent=c.parent, label=c.label)
            if c.name == "music"
            else c
            for c in TAXONOMY.categories
        )
    )
    v2 = keys.bundle(version=2, taxonomy=marked)
    engine, clock = open_engine(tmp_path / "a.db", keys, keys.bundle(version=1))
    purchases(engine)
    assert "music" in dict(engine.interests("shopping"))
    assert "music" in engine.segment().finest_path
    engine.load_bundle(v2)
    fresh, _ = open_engine(tmp_path / "b.db", keys, v2, clock=FixedClock(clock.now()))
    purchases(fresh)
    assert "music" not in dict(engine.interests("shopping"))
    assert engine.interests("shopping") == fresh.interests("shopping")
    assert engine.segment() == fresh.segment()
    np.testing.assert_allclose(
        engine.scoring_inputs("shopping").u, fresh.scoring_inputs("shopping").u, atol=1e-6
    )


def test_a_new_taxonomy_does_not_break_ranking_or_settings(tmp_path: Path, keys):
    """v2 adds a category and drops gambling (and its offer); an opt-in to gambling made under
    v1 must neither break ranking nor block other settings."""
    kept = [c for c in TAXONOMY.categories if c.name != "gambling"]
    grown = Taxonomy((*kept, Category("pets", label="Pets")))
    offer_list = [o for o in offers() if o.id != "o-gambling-1"]
    v2 = keys.bundle(version=2, taxonomy=grown, offer_list=offer_list)
    engine, _ = open_engine(tmp_path / "a.db", keys, keys.bundle(version=1))
    purchases(engine)
    engine.record("click", context="shopping", offer="o-gambling-1", now=T0 - HOUR)
    engine.update_settings(sensitive_opt_ins=["gambling", "health"])
    engine.recommend("shopping")
    engine.load_bundle(v2)
    recs = engine.recommend("shopping", k=ALL)
    assert "o-health-1" in ids(recs)  # the remaining opt-in still holds
    assert [c for c, _ in engine.interests("shopping")] == ["sci-fi", "music"]
    engine.update_settings(quiet_hours=(23, 6))
    assert engine.settings.quiet_hours == (23, 6)
