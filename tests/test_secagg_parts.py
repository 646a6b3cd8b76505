"""Building blocks of SecAgg+: config checks, Shamir, the graph, quantisation, Flower records."""

import numpy as np
import pytest
from flwr.app import RecordDict
from flwr.app.metadata import validate_message_type
from flwr.common.serde import recorddict_from_proto, recorddict_to_proto

from fedvlm.errors import ConfigError
from privacy.secagg import SecAggClient, SecAggConfig, Stage, run_protocol_in_memory, shamir
from privacy.secagg.flower import (
    MESSAGE_TYPES,
    load_client,
    payload_to_recorddict,
    recorddict_to_payload,
    save_client,
    stage_of,
)
from privacy.secagg.graph import neighbours
from privacy.secagg.quantize import dequantize, quantize


def test_wrap_prone_config_is_refused_naming_the_key():
    with pytest.raises(ConfigError, match="secagg-levels.*would wrap a 64-bit modulus"):
        SecAggConfig(num_clients=5000, clip=1.0, levels=1 << 40, max_weight=1 << 12)


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"threshold": 3, "degree": 8}, "secagg-threshold"),  # not a majority of neighbours
        ({"threshold": 9, "degree": 8}, "secagg-threshold"),
        ({"degree": 7}, "secagg-degree"),  # odd and not complete
        ({"clip": 0.0}, "secagg-clip"),
        ({"levels": 1}, "secagg-levels"),
        ({"max_weight": 0}, "secagg-max-weight"),
    ],
)
def test_bad_settings_name_their_key(kwargs, key):
    with pytest.raises(ConfigError) as err:
        SecAggConfig(**{"num_clients": 20, "clip": 1.0, **kwargs})
    assert err.value.key == key


def test_modulus_uses_the_smallest_container_that_cannot_wrap():
    assert SecAggConfig(num_clients=100, clip=1.0).dtype == np.uint32
    assert SecAggConfig(num_clients=1024, clip=1.0).dtype == np.uint32  # Flower wraps here
    assert SecAggConfig(num_clients=4, clip=1.0, levels=64).dtype == np.uint8
    assert SecAggConfig(num_clients=100, clip=1.0, levels=1 << 16, max_weight=10_000).dtype == (
        np.uint64
    )
    assert SecAggConfig(num_clients=100, clip=1.0, max_weight=10_000).dtype == np.uint32


def test_defaults_resolve_to_the_finest_uint32_step_and_round_trip():
    config = SecAggConfig(num_clients=100, clip=1.0)
    assert config.max_sum_bits == 32  # the finest step that still uploads uint32
    assert SecAggConfig(num_clients=100, clip=1.0, levels=config.levels + 1).dtype == np.uint64
    assert SecAggConfig.from_dict(config.to_dict()) == config
    assert SecAggConfig.from_dict({"secagg-clip": 2}, num_clients=3).clip == 2.0
    with pytest.raises(ConfigError, match="secagg-clip"):
        SecAggConfig.from_dict({"secagg-num-clients": 3})


def test_shamir_any_threshold_subset_rebuilds_and_fewer_do_not():
    secret = bytes(range(32))
    points = [7, 11, 2**64, 5, 99]
    shares = shamir.split(secret, points, 3)
    for subset in ([0, 1, 2], [2, 3, 4], [0, 2, 4]):
        assert shamir.combine([points[i] for i in subset], [shares[i] for i in subset], 32) == (
            secret
        )
    assert shamir.combine(points[:2], shares[:2], 32) != secret


def test_shamir_at_a_hundred_clients_round_trips():
    points = list(range(1, 101))
    secrets = [bytes([i]) * 32 for i in range(100)]
    all_shares = [shamir.split(s, points, 51) for s in secrets]
    for secret, shares in zip(secrets, all_shares, strict=True):
        assert shamir.combine(points[49:], shares[49:], 32) == secret


@pytest.mark.parametrize(("m", "k"), [(10, 4), (31, 10), (100, 28), (7, 6), (7, 12)])
def test_graph_is_regular_symmetric_and_public(m, k):
    ids = [3 * i + 1 for i in range(m)]
    graph = neighbours(ids, k, b"r" * 16)
    expected = min(k, m - 1)
    for c, peers in graph.items():
        assert len(peers) == expected and c not in peers
        assert all(c in graph[p] for p in peers)
    assert graph == neighbours(list(reversed(ids)), k, b"r" * 16)
    if k < m - 1:
        assert graph != neighbours(ids, k, b"s" * 16)


def test_quantisation_round_trip_and_weight_guard():
    config = SecAggConfig(num_clients=4, clip=0.5, levels=1001, max_weight=10)
    x = np.linspace(-0.7, 0.7, 301)
    q = quantize(x, 3, config)
    assert q[-1] == 3 and q.dtype == config.dtype
    weighted, weight = dequantize(q.astype(np.uint64), config)
    assert weight == 3
    assert np.abs(weighted - 3 * np.clip(x, -0.5, 0.5)).max() <= 3 * config.step
    with pytest.raises(ValueError, match="secagg-max-weight"):
        quantize(x, 11, config)
    with pytest.raises(ValueError, match="NaN"):
        quantize(np.array([np.nan]), 1, config)


def test_message_types_are_valid_flower_types():
    assert all(validate_message_type(t) for t in MESSAGE_TYPES.values())
    assert [stage_of(MESSAGE_TYPES[s]) for s in Stage] == list(Stage)


def _through_the_wire(records: RecordDict) -> RecordDict:
    return recorddict_from_proto(recorddict_to_proto(records))


def test_every_stage_payload_and_client_state_survive_flower_serialisation():
    n = 5
    rng = np.random.default_rng(0)
    updates = [rng.uniform(-1, 1, 40) for _ in range(n)]
    config = SecAggConfig(num_clients=n, clip=1.0)
    reference = run_protocol_in_memory(updates, None, config, keep_transcript=True)
    for stage_view in reference.transcript.values():
        for request, reply in stage_view.values():
            for payload in (request, reply):
                back = recorddict_to_payload(_through_the_wire(payload_to_recorddict(payload)))
                assert back.keys() == payload.keys()
                for key, value in payload.items():
                    if isinstance(value, np.ndarray):
                        np.testing.assert_array_equal(back[key], value)
                        assert back[key].dtype == value.dtype
                    else:
                        assert back[key] == value
    state = RecordDict()
    client = SecAggClient.from_state(reference.states[2])
    save_client(state, client)
    assert load_client(_through_the_wire(state)) == client
