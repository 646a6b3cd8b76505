"""Thin wrappers over the `cryptography` package: the only place key material is touched.

X25519 agreement + HKDF-SHA256 derive pairwise keys, AES-GCM protects shares in transit, Ed25519
signs key bundles and the survivor set, and a ChaCha20 keystream expands 32-byte seeds into masks
(and into the coins of stochastic rounding). Nothing secret ever comes from numpy's RNG.
"""

from __future__ import annotations

import os

import numpy as np
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .errors import AuthenticationError

KEY_BYTES = 32
_NONCE_BYTES = 12
_STREAM_NONCE = bytes(16)  # every stream key is derived fresh per round and purpose


def random_seed() -> bytes:
    """Return 32 bytes from the operating system's CSPRNG."""
    return os.urandom(KEY_BYTES)


def x25519_keypair() -> tuple[bytes, bytes]:
    """Return a fresh X25519 (private, public) key pair as raw bytes."""
    private = X25519PrivateKey.generate()
    return private.private_bytes_raw(), private.public_key().public_bytes_raw()


def x25519_public(private: bytes) -> bytes:
    """Return the public key of a raw X25519 private key (to check a rebuilt secret)."""
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()


def derive_key(private: bytes, peer_public: bytes, info: bytes) -> bytes:
    """Return a 32-byte key from X25519 agreement, bound to ``info`` by HKDF-SHA256."""
    shared = X25519PrivateKey.from_private_bytes(private).exchange(
        X25519PublicKey.from_public_bytes(peer_public)
    )
    return hkdf(shared, info)


def hkdf(material: bytes, info: bytes) -> bytes:
    """Return 32 bytes of HKDF-SHA256 output for ``info`` (domain separation of one secret)."""
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=info).derive(material)


def encrypt(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """Return ``nonce || AES-GCM(plaintext)``, authenticating ``aad`` as well."""
    nonce = os.urandom(_NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def decrypt(key: bytes, ciphertext: bytes, aad: bytes, what: str) -> bytes:
    """Return the plaintext, or raise AuthenticationError naming ``what`` failed."""
    try:
        return AESGCM(key).decrypt(ciphertext[:_NONCE_BYTES], ciphertext[_NONCE_BYTES:], aad)
    except (InvalidTag, ValueError) as err:
        raise AuthenticationError(
            f"{what} failed authentication: the ciphertext was tampered with or not meant for us"
        ) from err


def ed25519_keypair() -> tuple[bytes, bytes]:
    """Return a fresh Ed25519 (private, public) key pair as raw bytes."""
    private = Ed25519PrivateKey.generate()
    return private.private_bytes_raw(), private.public_key().public_bytes_raw()


def sign(private: bytes, message: bytes) -> bytes:
    """Return the Ed25519 signature of ``message``."""
    return Ed25519PrivateKey.from_private_bytes(private).sign(message)


def verify(public: bytes, signature: bytes, message: bytes) -> bool:
    """Return whether ``signature`` is a valid Ed25519 signature of ``message`` by ``public``."""
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


def keystream(key: bytes, nbytes: int) -> bytes:
    """Return ``nbytes`` of the ChaCha20 keystream of ``key``."""
    return (
        Cipher(algorithms.ChaCha20(key, _STREAM_NONCE), mode=None).encryptor().update(bytes(nbytes))
    )


def expand_mask(key: bytes, length: int, dtype: np.dtype) -> np.ndarray:
    """Return ``length`` uniform integers of ``dtype`` drawn from the keystream of ``key``."""
    dtype = np.dtype(dtype)
    return np.frombuffer(keystream(key, length * dtype.itemsize), dtype=dtype)


def uniform01(key: bytes, length: int) -> np.ndarray:
    """Return ``length`` floats uniform on [0, 1) with 53 random bits each, from ``key``."""
    words = expand_mask(key, length, np.dtype(np.uint64))
    return (words >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))
