"""Money, facility energy and carbon: exact arithmetic, the shipped tables, sparse against dense, bad input."""

import math

import pytest

from pathsim import simulate
from pathsim.errors import PathsimConfigError
from pathsim.footprint import PRICE_TERMS, J_PER_KWH, facility_table, footprint, grid_table, price_table, resolve_site


@pytest.fixture(scope="module")
def result():
    return simulate("tpu-v4-4x4x4", "switch-base-128", steps=2)


def test_cost_energy_and_carbon_arithmetic_is_exact(result):
    site = resolve_site("TPU v4", price=2.5, grid_intensity=0.4, pue=1.25)
    fp = footprint(result, site, run_tokens=1e9)
    step_s, chips = result.step_time.mean_s, result.chips
    assert fp.per_step.usd == chips * 2.5 * step_s / 3600.0
    assert fp.per_step.it_kwh == result.energy.it_j() / J_PER_KWH
    assert fp.per_step.facility_kwh == 1.25 * fp.per_step.it_kwh
    assert fp.per_step.tco2e == fp.per_step.facility_kwh * 0.4 / 1000.0
    steps = math.ceil(1e9 / result.tokens_per_step)
    assert fp.run_steps == steps and fp.run_tokens == steps * result.tokens_per_step >= 1e9
    for field in ("time_s", "it_kwh", "facility_kwh", "tco2e", "usd"):
        assert getattr(fp.per_run, field) == getattr(fp.per_step, field) * steps
        assert getattr(fp.per_million_tokens, field) == getattr(fp.per_step, field) * (1e6 / result.tokens_per_step)
    # The components of a step's facility energy add up to it.
    assert math.isclose(fp.energy_per_step.total_kwh(), fp.per_step.facility_kwh, rel_tol=1e-12)


def test_doubling_pue_doubles_facility_energy_and_carbon(result):
    one = footprint(result, resolve_site("TPU v4", pue=1.2))
    two = footprint(result, resolve_site("TPU v4", pue=2.4))
    assert two.per_step.it_kwh == one.per_step.it_kwh
    assert math.isclose(two.per_step.facility_kwh, 2 * one.per_step.facility_kwh, rel_tol=1e-12)
    assert math.isclose(two.per_step.tco2e, 2 * one.per_step.tco2e, rel_tol=1e-12)
    # The overhead above IT energy, (PUE − 1) × IT, grows from 0.2 to 1.4 of IT.
    assert math.isclose(two.energy_per_step.facility_overhead_kwh / one.energy_per_step.facility_overhead_kwh, 7.0, rel_tol=1e-12)
    assert two.per_step.usd == one.per_step.usd  # a cloud price per chip-hour does not follow PUE


def test_default_site_is_the_chips_first_offer_its_grid_and_its_provider():
    offer = next(o for o in price_table().offers if o.chip == "TPU v4")
    site = resolve_site("TPU v4")
    assert site.usd_per_chip_hour == offer.on_demand and site.price_term == "on_demand"
    assert site.kg_co2e_per_kwh == grid_table().regions[offer.grid_region].kg_co2e_per_kwh
    assert site.pue == facility_table().operators[offer.provider].pue


def test_shipped_tables_are_consistent():
    grids, operators = grid_table().regions, facility_table().operators
    for offer in price_table().offers:
        assert offer.grid_region in grids, offer
        assert offer.provider in operators, offer
        terms = [getattr(offer, t) for t in PRICE_TERMS if getattr(offer, t) is not None]
        assert terms == sorted(terms, reverse=True), f"commitments should cost less per hour: {offer}"
        assert offer.source.startswith("http") or "cloud" in offer.source.lower(), offer
    for region in grids.values():
        assert 0 <= region.kg_co2e_per_kwh < 1.2 and region.source


def test_sparse_model_uses_under_a_tenth_of_the_energy_of_a_dense_model_of_its_size():
    # Patterson et al. 2021 / the Pathways announcement: sparsely activated models can use < 1/10 of the energy
    # of dense models of similar size. Same cluster, same tokens, same site.
    site = resolve_site("TPU v4")
    sparse = footprint(simulate("tpu-v4-8x8x8", "switch-c-2048"), site).per_million_tokens.facility_kwh
    dense = footprint(simulate("tpu-v4-8x8x8", "switch-c-2048", dense="total_params"), site).per_million_tokens.facility_kwh
    assert sparse < 0.1 * dense


@pytest.mark.parametrize("kwargs,field", [
    (dict(price=-1.0), "price"),
    (dict(price="spot"), "price"),
    (dict(region="atlantis"), "region"),
    (dict(grid_intensity=-0.1), "grid_intensity"),
    (dict(pue=0.9), "pue"),
    (dict(pue="my-basement"), "pue"),
    (dict(provider="nobody"), "provider"),
])
def test_bad_site_input_names_the_field(kwargs, field):
    with pytest.raises(PathsimConfigError) as caught:
        resolve_site("TPU v4", **kwargs)
    assert caught.value.field == field and caught.value.fix


def test_a_chip_without_a_listed_price_asks_for_one():
    with pytest.raises(PathsimConfigError) as caught:
        resolve_site("Imaginary Accelerator 9000")
    assert caught.value.field == "price" and "--price" in caught.value.fix
    site = resolve_site("Imaginary Accelerator 9000", price=1.0, grid_intensity=0.3, pue=1.2)
    assert (site.usd_per_chip_hour, site.kg_co2e_per_kwh, site.pue) == (1.0, 0.3, 1.2)


def test_run_given_twice_or_badly_is_refused(result):
    site = resolve_site("TPU v4")
    for kwargs in (dict(run_tokens=1e9, run_steps=10), dict(run_tokens=-5.0), dict(run_steps=0)):
        with pytest.raises(PathsimConfigError):
            footprint(result, site, **kwargs)
