"""What a step, a million tokens and a training run cost: time, kWh, tCO2e and dollars.

From a simulation result (its IT energy per step, :mod:`pathsim.energy`) and a
site:

- facility energy = PUE × IT energy (cooling, power conversion);
- carbon = facility energy × the grid's intensity (kg CO2e per kWh);
- money = chips × price per chip-hour × time (cloud rental: hosts, network and
  power are in the price).

The site's numbers come from shipped tables with sources
(``topologies/economics/``: cloud prices per chip-hour, grid intensity per
region, PUE per operator) or from the user. By default the chip's first listed
cloud offer picks the price, its region's grid and its provider's PUE, so the
three describe one real place; every figure a report prints names its inputs.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Annotated, ClassVar, Literal

from annotated_types import Ge, Gt
from pydantic import BaseModel, ConfigDict, Field

from pathsim.errors import PathsimConfigError
from pathsim.presets import preset_path
from pathsim.result import SimulationResult
from pathsim.yaml_config import read_yaml_mapping, validate_model

PRICE_TERMS = ("on_demand", "commit_1y", "commit_3y")
J_PER_KWH = 3.6e6


class _Table(BaseModel):
    FIX_HINT: ClassVar[str] = "see the economics presets (`pathsim presets --kind economics`) and their sources"
    model_config = ConfigDict(extra="forbid", frozen=True)


class PriceOffer(_Table):
    chip: str = Field(description="the cluster file's chip.name this price is for")
    provider: str = Field(description="a provider named in facilities.yaml (its PUE applies)")
    region: str = Field(description="the cloud region the price is quoted for")
    grid_region: str = Field(description="the region of grid-intensity.yaml that region draws power from")
    on_demand: Annotated[float, Gt(0)]
    commit_1y: Annotated[float, Gt(0)] | None = None
    commit_3y: Annotated[float, Gt(0)] | None = None
    as_of: str
    source: str


class PriceTable(_Table):
    description: str
    unit: Literal["USD per chip-hour"]
    offers: list[PriceOffer] = Field(min_length=1)


class GridRegion(_Table):
    kg_co2e_per_kwh: Annotated[float, Ge(0)]
    year: int
    source: str


class GridTable(_Table):
    description: str
    regions: dict[str, GridRegion] = Field(min_length=1)


class Facility(_Table):
    pue: Annotated[float, Ge(1)]
    year: int
    source: str


class FacilityTable(_Table):
    description: str
    operators: dict[str, Facility] = Field(min_length=1)


@lru_cache(maxsize=None)
def _table(name: str, model: type[_Table]) -> _Table:
    path = preset_path("economics", name)
    if path is None:
        raise FileNotFoundError(f"pathsim's economics table {name}.yaml is missing from the installation")
    return validate_model(model, read_yaml_mapping(path), str(path))


def price_table() -> PriceTable:
    return _table("prices", PriceTable)


def grid_table() -> GridTable:
    return _table("grid-intensity", GridTable)


def facility_table() -> FacilityTable:
    return _table("facilities", FacilityTable)


class Site(BaseModel):
    """Where and on what terms the cluster runs: every number the footprint multiplies by, with its source."""

    pue: float
    pue_source: str
    grid_region: str
    kg_co2e_per_kwh: float
    grid_source: str
    usd_per_chip_hour: float
    price_term: str  # on_demand, commit_1y, commit_3y, or "user"
    provider: str
    price_source: str


def _number(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return float(str(value))
    except ValueError:
        return None


def resolve_site(chip: str, *, price: "str | float" = "on_demand", provider: str | None = None,
                 region: str | None = None, grid_intensity: float | None = None,
                 pue: "str | float | None" = None) -> Site:
    """The site a chip runs at.

    ``price``: a term of the chip's offer (``on_demand``, ``commit_1y``,
    ``commit_3y``) or USD per chip-hour. ``provider`` picks among several
    offers for the chip. ``region`` (a grid-intensity.yaml region) or
    ``grid_intensity`` (kg CO2e/kWh) overrides the offer's grid; ``pue``
    (a facilities.yaml operator or a number >= 1) overrides the provider's.
    """
    offers = [o for o in price_table().offers if o.chip == chip]
    if provider is not None:
        providers = sorted({o.provider for o in offers})
        offers = [o for o in offers if o.provider == provider]
        if not offers:
            raise PathsimConfigError("<arguments>", "provider", f"no {chip} offer from {provider!r} in prices.yaml",
                                     f"use one of {providers}" if providers else "drop --provider and give --price USD per chip-hour")
    offer = offers[0] if offers else None
    user_price = _number(price)
    if user_price is not None:
        if not math.isfinite(user_price) or user_price < 0:
            raise PathsimConfigError("<arguments>", "price", f"must be a non-negative USD per chip-hour, got {price!r}", "e.g. --price 2.50")
        usd, term, price_source = user_price, "user", "user value"
    elif price not in PRICE_TERMS:
        raise PathsimConfigError("<arguments>", "price", f"{price!r} is neither a price term nor a number",
                                 f"use one of {', '.join(PRICE_TERMS)} or USD per chip-hour, e.g. 2.50")
    elif offer is None:
        listed = sorted({o.chip for o in price_table().offers})
        raise PathsimConfigError("<arguments>", "price", f"prices.yaml lists no price for chip {chip!r} (it lists {', '.join(listed)})",
                                 "give --price USD per chip-hour, or add an offer to topologies/economics/prices.yaml")
    elif getattr(offer, price) is None:
        terms = [t for t in PRICE_TERMS if getattr(offer, t) is not None]
        raise PathsimConfigError("<arguments>", "price", f"{offer.provider} publishes no {price} price for {chip}",
                                 f"use {' or '.join(terms)}, or give USD per chip-hour")
    else:
        usd, term = float(getattr(offer, price)), str(price)
        price_source = f"{offer.provider} {offer.region}, {offer.as_of}: {offer.source}"

    grids = grid_table().regions
    if grid_intensity is not None:
        value = _number(grid_intensity)
        if value is None or not math.isfinite(value) or value < 0:
            raise PathsimConfigError("<arguments>", "grid_intensity", f"must be kg CO2e per kWh >= 0, got {grid_intensity!r}",
                                     "e.g. --grid-intensity 0.4")
        grid_region, kg, grid_source = "user", value, "user value"
    else:
        grid_region = region if region is not None else (offer.grid_region if offer else None)
        if grid_region is None:
            raise PathsimConfigError("<arguments>", "region", f"no cloud offer for {chip} says where it runs",
                                     f"give --region (one of {', '.join(sorted(grids))}) or --grid-intensity KG_PER_KWH")
        if grid_region not in grids:
            raise PathsimConfigError("<arguments>" if region is not None else "prices.yaml", "region",
                                     f"unknown grid region {grid_region!r}", f"use one of {', '.join(sorted(grids))}")
        kg, grid_source = grids[grid_region].kg_co2e_per_kwh, f"{grids[grid_region].year}: {grids[grid_region].source}"

    operators = facility_table().operators
    if pue is None:
        pue = offer.provider if offer is not None else None
        if pue is None:
            raise PathsimConfigError("<arguments>", "pue", f"no cloud offer for {chip} names an operator",
                                     f"give --pue (a number >= 1 or one of {', '.join(sorted(operators))})")
    pue_value = _number(pue)
    if pue_value is not None:
        if not math.isfinite(pue_value) or pue_value < 1:
            raise PathsimConfigError("<arguments>", "pue", f"must be at least 1 (facility energy / IT energy), got {pue!r}",
                                     "e.g. --pue 1.1")
        pue_source = "user value"
    elif pue in operators:
        pue_value, pue_source = operators[pue].pue, f"{pue}, {operators[pue].year}: {operators[pue].source}"
    else:
        raise PathsimConfigError("<arguments>", "pue", f"unknown operator {pue!r}",
                                 f"use a number >= 1 or one of {', '.join(sorted(operators))}")
    return Site(pue=pue_value, pue_source=pue_source, grid_region=grid_region, kg_co2e_per_kwh=kg, grid_source=grid_source,
                usd_per_chip_hour=usd, price_term=term, provider=offer.provider if offer else "user", price_source=price_source)


class Amounts(BaseModel):
    time_s: float
    it_kwh: float
    facility_kwh: float  # PUE × IT
    tco2e: float
    usd: float

    def scaled(self, factor: float) -> "Amounts":
        return Amounts(**{k: v * factor for k, v in self.model_dump().items()})


class EnergyShares(BaseModel):
    """Facility energy of one step by where it goes, in kWh; the fields add up to the step's facility energy."""

    chips_compute_kwh: float
    chips_communication_kwh: float
    chips_idle_kwh: float
    hosts_kwh: float
    network_kwh: float
    facility_overhead_kwh: float  # (PUE − 1) × IT

    def total_kwh(self) -> float:
        return sum(self.model_dump().values())


class Footprint(BaseModel):
    cluster: str
    workload: str
    chips: int
    tokens_per_step: int
    per_step: Amounts
    per_million_tokens: Amounts
    run_tokens: float | None  # tokens the run trains: whole steps, so the asked-for tokens rounded up to a step
    run_steps: int | None
    per_run: Amounts | None
    energy_per_step: EnergyShares
    site: Site


def run_step_count(tokens_per_step: int, run_tokens: float | None = None, run_steps: int | None = None) -> int | None:
    if run_tokens is not None and run_steps is not None:
        raise PathsimConfigError("<arguments>", "run_steps", "a run is given either in tokens or in steps, not both",
                                 "drop --run-steps or --run-tokens")
    if run_steps is not None:
        if isinstance(run_steps, bool) or not isinstance(run_steps, int) or run_steps < 1:
            raise PathsimConfigError("<arguments>", "run_steps", f"must be a positive integer, got {run_steps!r}", "e.g. --run-steps 500000")
        return run_steps
    if run_tokens is not None:
        if not math.isfinite(run_tokens) or run_tokens <= 0:
            raise PathsimConfigError("<arguments>", "run_tokens", f"must be a positive token count, got {run_tokens!r}", "e.g. --run-tokens 1T")
        return math.ceil(run_tokens / tokens_per_step)
    return None


def footprint(result: SimulationResult, site: Site, *, run_tokens: float | None = None,
              run_steps: int | None = None) -> Footprint:
    """Time, energy, carbon and money of `result`'s mean step, per million tokens and per run."""
    energy = result.energy
    watts = energy.inputs.chip_watts()
    chips = energy.inputs.chips
    activity = energy.activity
    it_kwh = energy.it_j() / J_PER_KWH
    facility_kwh = site.pue * it_kwh
    step_s = result.step_time.mean_s
    per_step = Amounts(time_s=step_s, it_kwh=it_kwh, facility_kwh=facility_kwh,
                       tco2e=facility_kwh * site.kg_co2e_per_kwh / 1000.0,
                       usd=chips * site.usd_per_chip_hour * step_s / 3600.0)
    shares = EnergyShares(chips_compute_kwh=chips * watts["compute"] * activity.compute_s / J_PER_KWH,
                          chips_communication_kwh=chips * watts["communication"] * activity.communication_s / J_PER_KWH,
                          chips_idle_kwh=chips * watts["idle"] * activity.idle_s / J_PER_KWH,
                          hosts_kwh=energy.hosts_j / J_PER_KWH, network_kwh=energy.network_j / J_PER_KWH,
                          facility_overhead_kwh=(site.pue - 1.0) * it_kwh)
    steps = run_step_count(result.tokens_per_step, run_tokens, run_steps)
    return Footprint(cluster=result.cluster, workload=result.workload, chips=result.chips,
                     tokens_per_step=result.tokens_per_step, per_step=per_step,
                     per_million_tokens=per_step.scaled(1e6 / result.tokens_per_step),
                     run_tokens=float(steps * result.tokens_per_step) if steps is not None else None,
                     run_steps=steps, per_run=per_step.scaled(steps) if steps is not None else None,
                     energy_per_step=shares, site=site)
