"""Errors of the secure-aggregation protocol.

Each names the client and the stage at fault, so an operator can tell a dropout from an attack.
"""

from fedvlm.errors import FedVLMError


class SecAggError(FedVLMError):
    """The secure-aggregation protocol cannot proceed."""


class MalformedPayloadError(SecAggError, ValueError):
    """A stage payload misses a key, has the wrong type, or a vector of the wrong length."""


class AuthenticationError(SecAggError):
    """A ciphertext, signature or reconstructed secret failed its cryptographic check."""


class CoordinatorMisbehaviourError(SecAggError):
    """An honest client refuses a coordinator request that could expose its peers' inputs."""


class RoundFailedError(SecAggError):
    """Too many clients dropped out for the sum to be recovered (or safely revealed)."""
