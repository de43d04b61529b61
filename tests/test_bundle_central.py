"""The central guarantee a bundle publishes (docs/privacy.md): derived from its parameters,
checked by the device, refused when it cannot be kept; bundles from before it still load."""

from __future__ import annotations

import io
import json
import zipfile
from typing import Any

import pytest

from engine_fixtures import T0, Keys, config
from localrank.bundle import BundleConfig, open_bundle
from localrank.bundle.container import _HEADER
from localrank.errors import BundleFormatError, InputError
from localrank.privacy.continual import epsilon_for_rho, history_rho, rho_for_epsilon
from test_bundle import payload_end, resigned

CENTRAL: dict[str, Any] = {"mode": "central", "epsilon": 0.1, "census_interval_days": 30}
NEW_KEYS = (
    "central_mechanism",
    "central_cadence_days",
    "central_window_reports",
    "central_epsilon_window",
    "central_delta",
    "central_history_days",
)


def manifest_config(data: bytes) -> dict[str, Any]:
    payload = data[_HEADER.size : payload_end(data)]
    with zipfile.ZipFile(io.BytesIO(payload)) as zf:
        config: dict[str, Any] = json.loads(zf.read("manifest.json"))["config"]
    return config


def test_a_central_bundle_publishes_its_device_level_guarantee(keys: Keys) -> None:
    data = keys.bundle(**CENTRAL, central_epsilon_window=2.0, central_history_days=240)
    published = manifest_config(data)["central_guarantee"]
    rho = rho_for_epsilon(2.0, 1e-6)
    census = 0.1**2 / 2  # one ε = 0.1 census per 30 days, ε²/2 in zCDP
    assert published["mechanism"] == "sqrt" and published["cadence_days"] == 30
    assert published["reports_per_window"] == 30 and published["reports_per_epoch"] == 3
    assert published["releases"] == 8  # 240 days at one release per 30
    assert published["delta"] == 1e-6
    assert published["rho_window"] == pytest.approx(rho, rel=1e-12)
    assert published["epsilon_window"] == pytest.approx(2.0, abs=1e-9)
    assert published["rho_census"] == pytest.approx(census, rel=1e-12)
    assert published["rho_per_report"] == pytest.approx((rho - census) / 30, rel=1e-12)
    # the whole history: 8 windows, each offer once in a lifetime, so their ρ add up
    assert published["epsilon_history"] == pytest.approx(
        epsilon_for_rho(history_rho(rho, 240), 1e-6), rel=1e-12
    )
    assert published["epsilon_history"] == pytest.approx(6.35, abs=0.01)  # docs/privacy.md
    opened = open_bundle(data, keys.public, now=T0)
    assert opened.config.central_guarantee is not None
    assert opened.config.central_guarantee.epsilon_history == published["epsilon_history"]
    assert "central_guarantee" not in manifest_config(keys.bundle())  # ldp: nothing to promise


def test_a_guarantee_that_contradicts_its_parameters_is_refused(keys: Keys) -> None:
    data = keys.bundle(**CENTRAL)

    def boast(m: dict[str, Any]) -> None:
        m["config"]["central_guarantee"]["epsilon_window"] = 0.5

    with pytest.raises(BundleFormatError, match="central_guarantee"):
        open_bundle(resigned(data, keys, manifest_edit=boast), keys.public, now=T0)

    def hide(m: dict[str, Any]) -> None:
        del m["config"]["central_guarantee"]

    with pytest.raises(BundleFormatError, match="central_guarantee"):
        open_bundle(resigned(data, keys, manifest_edit=hide), keys.public, now=T0)


def test_a_central_config_whose_census_spends_the_budget_is_refused() -> None:
    with pytest.raises(InputError, match=r"^epsilon: .*census.*ε = 2 every 7 days"):
        config(mode="central")  # the ldp census defaults: ρ = 10 per 30 days
    with pytest.raises(InputError, match="central_mechanism"):
        config(**CENTRAL, central_mechanism="laplace")
    with pytest.raises(InputError, match="central_window_reports"):
        config(**CENTRAL, central_window_reports=0)
    # the first central design made no 30-day promise, so its census is not charged
    assert config(mode="central", central_mechanism="epoch-laplace").central_guarantee is None


def test_a_bundle_from_before_the_continual_release_still_loads(keys: Keys) -> None:
    """A bundle signed before the central_* keys existed: central mode then meant per-epoch
    Laplace noise at central_epsilon, with the weekly ε = 2 census. It loads, and means that."""
    data = keys.bundle(mode="central", central_mechanism="epoch-laplace")

    def old(m: dict[str, Any]) -> None:
        for key in NEW_KEYS:
            del m["config"][key]

    opened = open_bundle(resigned(data, keys, manifest_edit=old), keys.public, now=T0)
    assert opened.config.mode == "central" and opened.config.epsilon == 2.0
    assert opened.config.central_mechanism == "epoch-laplace"
    assert opened.config.central_guarantee is None
    assert BundleConfig.from_json(opened.config.to_json()) == opened.config
