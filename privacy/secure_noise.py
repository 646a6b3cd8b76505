"""Randomness for differential privacy from a cryptographically secure generator.

DP's guarantee assumes the noise (and the Poisson sampling) is unpredictable to whoever sees
the release. torch's and numpy's default generators (Mersenne Twister, PCG64) are not: their
whole future output follows from a few hundred observed values or from the seed. Opacus'
own answer, ``secure_mode=True``, needs the ``torchcsprng`` extension, which has no wheel for
the pinned torch; so this module draws them from AES-256 in counter mode (``cryptography``,
the CSPRNG construction of NIST SP 800-90A's CTR_DRBG without its reseeding) keyed with 32
bytes from the OS (`os.urandom`):

- uniforms in (0, 1) from 53 random bits each;
- standard normals by Box-Muller, and, as Opacus' ``secure_mode`` does against the
  floating-point attacks on Gaussian samplers (Mironov 2012; Holohan et al. 2021), each
  noise value is the sum of 4 normals divided by 2, still N(0, 1).

``seed`` derives the key from a number instead, for tests and benchmarks only.
"""

import hashlib
import math
import os

import numpy as np
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

_SMOOTHING = 4  # normals summed per noise value (Opacus secure_mode's 2n with n = 2)


class SecureRandom:
    """A CSPRNG stream (AES-256-CTR) with the draws DP needs.

    Parameters
    ----------
    seed : int, optional
        Derive the key from ``seed`` (reproducible; tests only). By default the key is
        32 bytes of OS entropy, never stored.
    """

    def __init__(self, seed: int | None = None) -> None:
        key = (
            os.urandom(32) if seed is None else hashlib.sha256(b"fedvlm-dp-seed:%d" % seed).digest()
        )
        # A fresh key per stream, so the all-zero initial counter is never reused with a key.
        self._stream = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()

    def _words(self, count: int) -> np.ndarray:
        return np.frombuffer(self._stream.update(bytes(8 * count)), dtype="<u8")

    def uniform(self, count: int) -> np.ndarray:
        """``count`` uniforms in the open interval (0, 1), 53 random bits each."""
        return ((self._words(count) >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53

    def standard_normal(self, count: int) -> np.ndarray:
        """``count`` N(0, 1) draws (Box-Muller, smoothed as in the module docstring)."""
        total = count * _SMOOTHING
        pairs = (total + 1) // 2
        u1, u2 = self.uniform(pairs), self.uniform(pairs)
        radius = np.sqrt(-2.0 * np.log(u1))
        angle = 2.0 * math.pi * u2
        normals = np.concatenate([radius * np.cos(angle), radius * np.sin(angle)])[:total]
        return normals.reshape(count, _SMOOTHING).sum(axis=1) / math.sqrt(_SMOOTHING)

    def normal(self, loc: float, scale: float, size: tuple[int, ...] = ()) -> np.ndarray:
        """``numpy.random.Generator.normal``'s signature, from this stream."""
        count = math.prod(size)
        return loc + scale * self.standard_normal(count).reshape(size)

    def normal_like(self, std: float, reference: torch.Tensor) -> torch.Tensor:
        """Gaussian noise of ``std`` with the shape, dtype and device of ``reference``."""
        if std == 0:
            return torch.zeros_like(reference)
        draws = self.standard_normal(reference.numel()).reshape(tuple(reference.shape))
        return torch.from_numpy(std * draws).to(dtype=reference.dtype, device=reference.device)

    def poisson_batch(self, num_examples: int, rate: float) -> torch.Tensor:
        """Indices of a Poisson sample: each example independently with probability ``rate``."""
        return torch.from_numpy(np.flatnonzero(self.uniform(num_examples) < rate))
