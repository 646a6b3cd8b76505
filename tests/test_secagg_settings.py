"""The secure-aggregation settings both ends parse, and the update layout they share."""

import numpy as np
import pytest
import torch

from fedvlm.errors import ConfigError
from privacy.secagg import CoordinatorMisbehaviourError
from privacy.secagg.settings import (
    SecureAggregationSettings,
    check_offered,
    flatten_update,
    unflatten_sum,
)


def test_defaults_and_bad_values_name_the_key():
    settings = SecureAggregationSettings.from_config({})
    assert not settings.enabled and settings.clip == 10.0 and settings.max_weight == 1000
    for key, value in [
        ("secagg-clip", -1.0),
        ("secagg-clip", float("inf")),
        ("secagg-max-weight", 0),
        ("secagg-levels", 1),
        ("secagg-threshold", -2),
        ("secure-aggregation", "yes"),
    ]:
        with pytest.raises(ConfigError, match=key):
            SecureAggregationSettings.from_config({key: value})


def test_round_parameters_and_weights():
    settings = SecureAggregationSettings.from_config({"secagg-max-weight": 50})
    assert settings.weight(30) == 30 and settings.weight(80) == 50
    assert settings.weight(80, uniform_weights=True) == 1
    assert settings.round_config(10, uniform_weights=True).max_weight == 1
    config = settings.round_config(10)
    assert config.max_weight == 50 and config.dtype == np.uint32
    with pytest.raises(ConfigError, match="secagg-degree"):
        SecureAggregationSettings.from_config({"secagg-degree": 3}).round_config(10)


def test_a_site_refuses_weaker_parameters_than_its_own_naming_the_keys():
    mine = SecureAggregationSettings.from_config({"secure-aggregation": True})
    check_offered(mine.round_config(20), mine, uniform_weights=False)  # the same: accepted
    weaker = SecureAggregationSettings.from_config(
        {
            "secure-aggregation": True,
            "secagg-degree": 8,
            "secagg-threshold": 5,
            "secagg-clip": 100.0,
        }
    ).round_config(20)
    with pytest.raises(CoordinatorMisbehaviourError, match="secagg-threshold = 5") as err:
        check_offered(weaker, mine, uniform_weights=False)
    assert "secagg-degree = 8" in str(err.value) and "secagg-clip" in str(err.value)
    with pytest.raises(CoordinatorMisbehaviourError, match="secagg-max-weight"):
        check_offered(mine.round_config(20), mine, uniform_weights=True)  # DP wants weight 1
    off = SecureAggregationSettings.from_config({})
    with pytest.raises(CoordinatorMisbehaviourError, match="secure-aggregation = false"):
        check_offered(off.round_config(20), off, uniform_weights=False)


def test_flatten_sorts_names_clips_the_l2_norm_and_unflatten_inverts_it():
    update = {"b": torch.full((2, 3), 1.0), "a": torch.tensor([3.0, 4.0])}
    flat = flatten_update(update, clip=100.0)
    assert flat.tolist() == [3.0, 4.0] + [1.0] * 6
    back = unflatten_sum(flat, {"b": (2, 3), "a": (2,)})
    assert back["a"].dtype == np.float32 and back["b"].shape == (2, 3)
    assert back["a"].tolist() == [3.0, 4.0]
    clipped = flatten_update(update, clip=1.0)
    assert np.linalg.norm(clipped) == pytest.approx(1.0)
    assert clipped[0] / clipped[1] == pytest.approx(0.75)  # direction kept
    with pytest.raises(ValueError, match="7 values"):
        unflatten_sum(np.zeros(7), {"b": (2, 3), "a": (2,)})


def test_a_federation_too_small_to_survive_one_dropout_is_named_at_start():
    """4 sites at the defaults (degree 2, threshold 2: with one colluding site a threshold
    of 3 of 3 would be needed on the complete graph) fail a round on one lost site; the
    warning says so and names 10 sites (degree 4, threshold 3). Stating that no site
    colludes (corrupt fraction 0) and one of 4 may drop gives back the complete graph."""
    settings = SecureAggregationSettings.from_config({"secure-aggregation": True})
    warning = settings.dropout_warning(4)
    assert warning is not None
    assert "4 sites survives no dropout" in warning and "degree 2, threshold 2" in warning
    assert "from 10 sites on" in warning
    assert settings.dropout_warning(10) is None
    assert settings.round_config(10).dropouts_survived == 1
    trusting = SecureAggregationSettings.from_config(
        {"secagg-corrupt-fraction": 0.0, "secagg-dropout-fraction": 0.25}
    )
    assert trusting.dropout_warning(4) is None
    assert (trusting.round_config(4).degree, trusting.round_config(4).threshold) == (3, 2)
