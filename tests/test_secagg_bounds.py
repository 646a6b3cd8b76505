"""Graph degree and threshold derived from the threat model (privacy/secagg/bounds.py).

Mutations tried (defence removed -> test that fails):
- colluding sites rounded down (``ThreatModel.corrupt`` with ``math.floor``) ->
  ``test_any_corrupt_fraction_counts_at_least_one_colluding_site``;
- ``Fraction(str(...))`` replaced by the float product in ``ThreatModel.corrupt`` -> the same
  test (0.07 x 100 rounds up to 8 sites);
- the privacy check of explicit values removed (``if not result.private`` in
  ``SecAggConfig._graph_parameters``) ->
  ``test_explicit_parameters_below_the_bound_are_refused_naming_the_key``;
- ``SiteFloor.check`` evaluating at the offered δ instead of the larger of the site's and the
  offered -> ``test_a_site_holds_the_stated_dropout_fraction_to_its_floor``;
- the split-view term left out of ``bounds._privacy`` ->
  ``test_the_derivation_matches_the_reference_parameter_finder`` and the test above.
"""

import hashlib
import math
from collections import Counter

import pytest
from scipy.stats import hypergeom

from fedvlm.errors import ConfigError
from privacy.secagg import CoordinatorMisbehaviourError, SecAggConfig
from privacy.secagg.bounds import ThreatModel, _tail, derive, evaluate
from privacy.secagg.graph import neighbours
from privacy.secagg.settings import SecureAggregationSettings, SiteFloor, check_offered

DEFAULT = ThreatModel(0.05, 0.1, 40, 20)


def test_the_exact_tail_agrees_with_scipy_where_floats_still_hold():
    for population, marked, draws, at_least in [(99, 5, 26, 6), (99, 15, 26, 12), (9, 1, 4, 2)]:
        exact = _tail(population, marked, draws, at_least) / math.comb(population, draws)
        assert exact == pytest.approx(hypergeom.sf(at_least - 1, population, marked, draws))


def test_corrupt_neighbours_of_the_ring_graph_are_hypergeometric():
    """The bound's model of the graph: over fresh seeds, a client's neighbours in the ring
    Harary graph are a uniform k-subset of the others, so its count of corrupt neighbours
    follows Hypergeometric(n - 1, corrupt, k)."""
    n, degree, corrupt = 30, 6, set(range(1, 7))
    ids = list(range(n))
    seeds = [hashlib.sha256(s.to_bytes(2, "little")).digest() for s in range(3000)]
    counts = Counter(len(corrupt & set(neighbours(ids, degree, seed)[0])) for seed in seeds)
    for value in range(4):
        assert counts[value] / 3000 == pytest.approx(
            hypergeom.pmf(value, n - 1, len(corrupt), degree), abs=0.03
        )


@pytest.mark.parametrize(
    ("gamma", "delta", "expected"),
    [(0.33, 0.05, (42, 37)), (0.05, 0.33, (72, 39)), (0.3, 0.3, (92, 62))],
)
def test_the_derivation_matches_the_reference_parameter_finder(gamma, delta, expected):
    """Google's Harary-graph parameter finder for Bell et al.'s semi-malicious setting
    (fcp/secagg/server/graph_parameter_finder_test.cc, σ = 40, η = 20) gives these (k, t) at
    n = 100; the exact tails here give the same."""
    bounds = derive(100, ThreatModel(gamma, delta, 40, 20))
    assert (bounds.degree, bounds.threshold) == expected
    assert bounds.private and bounds.correct


def test_the_defaults_keep_a_split_view_beyond_the_colluding_sites():
    for n in (3, 4, 10, 20, 50, 100, 300):
        bounds = derive(n, DEFAULT)
        assert bounds.colluders_needed > bounds.corrupt >= 1, bounds
        assert bounds.privacy_failure <= 2.0**-40 and bounds.correctness_failure <= 2.0**-20


def test_any_corrupt_fraction_counts_at_least_one_colluding_site():
    assert [DEFAULT.corrupt(n) for n in (2, 4, 10, 20, 21, 100)] == [1, 1, 1, 1, 2, 5]
    assert ThreatModel(0.07, 0.1, 40, 20).corrupt(100) == 7  # 0.07 * 100 is 7.000000000000001
    assert ThreatModel(0.0, 0.1, 40, 20).corrupt(1000) == 0
    assert SecAggConfig(num_clients=4, clip=1.0).guarantees.corrupt == 1


def test_a_federation_too_small_for_the_threat_model_is_refused_naming_the_key():
    """Two sites: the sum gives each the other's update, so no colluding site can be
    excluded; the run must state that none colludes, and that statement is recorded."""
    with pytest.raises(ConfigError, match="secagg-corrupt-fraction") as err:
        SecAggConfig(num_clients=2, clip=1.0)
    assert "no graph degree and threshold for 2 sites" in str(err.value)
    assert "1 colluding site" in str(err.value) and "0 states that no site colludes" in str(
        err.value
    )
    trusting = SecAggConfig(num_clients=2, clip=1.0, corrupt_fraction=0.0)
    assert (trusting.degree, trusting.threshold) == (1, 1)
    record = trusting.guarantees.as_record(trusting.threat)
    assert record["corrupt_fraction"] == 0.0 and record["corrupt"] == 0


def test_explicit_parameters_below_the_bound_are_refused_naming_the_key():
    """The review's parameters (n = 10, k = 9, t = 5) with one colluding site: refused, with
    the threshold that would do; a threshold that meets the bound is accepted."""
    with pytest.raises(ConfigError, match="secagg-threshold") as err:
        SecAggConfig(num_clients=10, clip=1.0, degree=9, threshold=5)
    assert "1 colluding neighbours" in str(err.value) and "at least 6" in str(err.value)
    config = SecAggConfig(num_clients=10, clip=1.0, degree=9, threshold=6)
    assert config.guarantees.private and config.guarantees.colluders_needed == 3
    assert evaluate(10, 9, 6, DEFAULT).correct  # 3 dropouts of 9 neighbours are survived
    with pytest.raises(ConfigError, match="secagg-degree"):
        SecAggConfig(num_clients=10, clip=1.0, degree=2, corrupt_fraction=0.3)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("secagg-corrupt-fraction", 1.0),
        ("secagg-corrupt-fraction", -0.1),
        ("secagg-dropout-fraction", 1.5),
        ("secagg-sigma", 0),
        ("secagg-eta", 2.5),
        ("secagg-eta", 500),
    ],
)
def test_bad_threat_model_values_name_the_key(key, value):
    with pytest.raises(ConfigError, match=key):
        SecureAggregationSettings.from_config({key: value})


def test_a_site_refuses_a_coordinator_that_states_a_weaker_threat_model():
    mine = SecureAggregationSettings.from_config({"secure-aggregation": True})
    weaker = SecureAggregationSettings.from_config(
        {"secure-aggregation": True, "secagg-corrupt-fraction": 0.0}
    )
    with pytest.raises(CoordinatorMisbehaviourError, match="secagg-corrupt-fraction = 0.0"):
        check_offered(weaker.round_config(10), mine, uniform_weights=False)


def test_a_site_holds_the_stated_dropout_fraction_to_its_floor():
    """A coordinator that states no dropout (δ = 0) gets k = 6, t = 6 at 100 sites. It can drop
    any site it likes, though, and with the 10 dropouts of a site's default δ = 0.1 on top of
    its 5 colluders a ring of degree 6 falls apart (partial sums open) with probability about
    0.02: the site refuses. The defaults, derived at δ = 0.1, pass."""
    offered = SecAggConfig(num_clients=100, clip=1.0, dropout_fraction=0.0)
    assert (offered.degree, offered.threshold) == (6, 6)
    floor = SiteFloor(corrupt_fraction=0.05, sigma=40, federation_size=0, dropout_fraction=0.1)
    with pytest.raises(CoordinatorMisbehaviourError, match="secagg-dropout-fraction = 0.1"):
        floor.check(offered)
    floor.check(SecAggConfig(num_clients=100, clip=1.0))
