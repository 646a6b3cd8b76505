"""DP randomness from AES-CTR (privacy/secure_noise.py): right distributions, unpredictable."""

import numpy as np
import pytest
import torch
from scipy import stats

from privacy.dp_sgd import make_private
from privacy.secure_noise import SecureRandom


def test_normals_are_standard_and_uniforms_open_unit():
    draws = SecureRandom(1).standard_normal(200_000)
    assert abs(float(draws.mean())) < 0.01 and float(draws.std()) == pytest.approx(1.0, rel=0.01)
    assert stats.kstest(draws, "norm").pvalue > 1e-3
    uniforms = SecureRandom(2).uniform(100_000)
    assert float(uniforms.min()) > 0.0 and float(uniforms.max()) < 1.0
    assert stats.kstest(uniforms, "uniform").pvalue > 1e-3


def test_poisson_batches_have_rate_q():
    source = SecureRandom(3)
    sizes = [len(source.poisson_batch(200, 0.1)) for _ in range(400)]
    assert float(np.mean(sizes)) == pytest.approx(20.0, rel=0.05)
    assert float(np.var(sizes)) == pytest.approx(200 * 0.1 * 0.9, rel=0.25)  # binomial


def test_unseeded_streams_differ_and_seeded_ones_replay():
    assert not np.array_equal(SecureRandom().uniform(8), SecureRandom().uniform(8))
    assert np.array_equal(SecureRandom(5).uniform(8), SecureRandom(5).uniform(8))


def test_opacus_noise_comes_from_the_secure_stream():
    """The DP optimizer's noise is the stream's, not torch's generator: reseeding torch does
    not change it, the stream's seed does. Mutation: drop use_secure_noise -> fails."""
    layer = torch.nn.Linear(3, 2)

    def noise(seed: int) -> torch.Tensor:
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(3, 2))
        model[0].load_state_dict(layer.state_dict())
        _, hooks, optimizer = make_private(
            model,
            4,
            lr=1.0,
            batch_size=4,
            noise_multiplier=1.0,
            max_grad_norm=1.0,
            source=SecureRandom(seed),
        )
        model(torch.zeros(4, 3)).sum().backward()
        for p in model.parameters():  # zero gradients: the update is the noise alone
            p.grad_sample = torch.zeros_like(p.grad_sample)
        before = [p.detach().clone() for p in model.parameters()]
        optimizer.step()
        hooks.cleanup()
        after = list(model.parameters())
        return torch.cat([(b - a.detach()).flatten() for b, a in zip(before, after, strict=True)])

    assert torch.equal(noise(7), noise(7))
    assert not torch.equal(noise(7), noise(8))
