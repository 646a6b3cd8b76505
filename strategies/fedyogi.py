"""FedYogi (Reddi et al., ICLR 2021): Yogi on the server."""

import numpy as np

from strategies.fedopt import FedOpt


class FedYogi(FedOpt):
    """Yogi server optimizer: Adam whose second moment grows additively.

    ``v <- v - (1 - beta_2) delta^2 sign(v - delta^2)``: the effective learning rate
    changes more gently than Adam's when the pseudo-gradient's scale jumps between
    rounds (sites joining or dropping out).

    Parameters
    ----------
    eta : float (default: 1e-2)
        Server learning rate.
    beta_1 : float (default: 0.9)
        First-moment decay.
    beta_2 : float (default: 0.99)
        Second-moment decay.
    tau : float (default: 1e-3)
        Adaptivity floor.
    **kwargs
        See `AdapterStrategy`.
    """

    def __init__(
        self,
        *,
        eta: float = 1e-2,
        beta_1: float = 0.9,
        beta_2: float = 0.99,
        tau: float = 1e-3,
        **kwargs: object,
    ) -> None:
        super().__init__(eta=eta, beta_1=beta_1, beta_2=beta_2, tau=tau, **kwargs)

    def second_moment(self, v: np.ndarray, delta: np.ndarray) -> np.ndarray:
        """Yogi's sign-controlled additive update of the second moment."""
        squared = delta**2
        return v - (1.0 - self.beta_2) * squared * np.sign(v - squared)

    def step_size(self, server_round: int) -> float:
        """Constant learning rate (no bias correction, as in Flower's FedYogi)."""
        return self.eta
