"""The evaluation grid: which cells run, and what each cell's bundle config is."""

from __future__ import annotations

from dataclasses import dataclass

from localrank.bundle import BundleConfig
from tools.evaluation.movie_catalog import movielens_config

__all__ = ["DEFAULT_GRID", "QUICK_GRID", "Cell"]


@dataclass(frozen=True)
class Cell:
    """One evaluated configuration.

    ``mode="ldp"``: the per-report ε is ``epsilon``. ``mode="central"``: the server's ε is
    ``epsilon`` per device-epoch (the first central design; the census stays LDP at the product
    default). ``epsilon=None`` in central mode is the no-noise reference: k-anonymity
    (``min_population``) alone. ``window=True`` (central only): the continual release, with
    ``epsilon`` the device-level ε per 30 days at δ = 10⁻⁶, census included (docs/privacy.md).
    """

    mode: str
    epsilon: float | None
    min_population: int
    window: bool = False
    #: the continual release's cadence (``window`` cells): one release every this many days
    cadence_days: int = 30

    def __post_init__(self) -> None:
        if self.window and (self.mode != "central" or self.epsilon is None):
            raise ValueError("window: only a central cell with an ε has a 30-day guarantee")

    @property
    def name(self) -> str:
        eps = "none" if self.epsilon is None else f"{self.epsilon:g}"
        per = "/30d" if self.window else ""
        every = f" every {self.cadence_days}d" if self.window and self.cadence_days != 30 else ""
        return f"{self.mode} ε={eps}{per} k={self.min_population}{every}"

    @property
    def unit(self) -> str:
        """What the cell's ε protects: one report (ldp), one device over one epoch (the first
        central design), or one device over any 30 days (the continual release)."""
        if self.mode == "ldp":
            return "report"
        return "device-30-days" if self.window else "device-epoch"

    @property
    def noise(self) -> bool:
        return self.epsilon is not None

    def config(self, d: int) -> BundleConfig:
        if self.mode == "ldp":
            assert self.epsilon is not None
            # The budgets stay the product's defaults (8 an epoch, 64 a month): at a higher
            # per-report ε fewer reports fit, which is the trade-off the grid measures.
            return movielens_config(
                d, mode="ldp", epsilon=self.epsilon, min_population=self.min_population
            )
        if self.window:
            assert self.epsilon is not None
            return movielens_config(
                d,
                mode="central",
                central_epsilon_window=self.epsilon,
                central_cadence_days=self.cadence_days,
                # the census is charged to the same 30-day budget: small and monthly
                epsilon=0.1,
                census_interval_days=30,
                min_population=self.min_population,
            )
        return movielens_config(
            d,
            mode="central",
            # the first central design: per-epoch noise at the server's ε, a guarantee per
            # device-epoch (its census is the ldp default)
            central_mechanism="epoch-laplace",
            central_epsilon=self.epsilon or 1.0,
            min_population=self.min_population,
        )


def _grid(k_values: tuple[int, ...]) -> tuple[Cell, ...]:
    cells = []
    for k in k_values:
        cells += [Cell("ldp", e, k) for e in (0.5, 1.0, 2.0, 4.0)]
        # the first central design (per-epoch noise, a guarantee per device-epoch) left the
        # default grid with the continual release; Cell("central", ε, k) still runs it
        cells.append(Cell("central", None, k))
        cells += [Cell("central", e, k, window=True) for e in (0.5, 1.0, 2.0, 4.0)]
    return tuple(cells)


DEFAULT_GRID = _grid((20, 50))
QUICK_GRID = (
    Cell("ldp", 2.0, 50),
    Cell("central", None, 50),
    Cell("central", 1.0, 50, window=True),
)
