"""FFA-LoRA (Sun et al., ICLR 2024): freeze A, train and exchange only B."""

from collections.abc import Iterable

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid

from fedvlm import contract
from fedvlm.lora_factors import exchanged_keys
from strategies.fedavg import FedAvg
from strategies.validation import TensorSpec


class FFALoRA(FedAvg):
    """FedAvg of B-only updates, with every A fixed at the shared seeded initialisation.

    With A frozen and the same at every site, a site's weight change is ``B_i A`` and
    ``mean_i(B_i A) = mean_i(B_i) A``: averaging B is *exactly* averaging the weight
    changes, where plain FedAvg of LoRA averages A and B separately and gets cross
    terms. The update is linear in B, so it composes exactly with secure aggregation
    and client-level DP noise (the noise lands on B only, half the coordinates), and
    sites send about half the bytes. The trade-off is expressiveness: a rank-r adapter
    with A fixed spans less than one with A trained; the paper compensates with a
    larger rank or learning rate. Recommended whenever DP or secure aggregation is on.

    The global adapter sent still carries the A factors (so every site holds the very
    same A); replies must hold exactly the `exchanged_keys` of it.

    Parameters
    ----------
    max_update_norm, clip_update_norm : float or None
        See `AdapterStrategy`.
    **fedavg_kwargs
        Sampling settings passed to Flower's `FedAvg`.
    """

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Send the full global adapter and ask clients to freeze A."""
        config[contract.FREEZE_LORA_A] = True
        return super().configure_train(server_round, arrays, config, grid)

    def update_spec(self) -> dict[str, TensorSpec]:
        """Updates hold the B factors and non-LoRA tensors only."""
        spec = super().update_spec()
        return {name: spec[name] for name in exchanged_keys(spec)}

    def apply_mean_update(
        self, server_round: int, mean_update: dict[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        """Add the mean update to the exchanged tensors; A factors stay as they are."""
        current = self._require_global()
        return {name: current[name] + mean_update.get(name, 0.0) for name in current}
