"""FedAdam (Reddi et al., ICLR 2021): Adam on the server."""

import numpy as np

from strategies.fedopt import FedOpt


class FedAdam(FedOpt):
    """Adam server optimizer on the mean update, with Flower's bias correction.

    ``v <- beta_2 v + (1 - beta_2) delta^2`` and the step
    ``eta * sqrt(1 - beta_2^(t+1)) / (1 - beta_1^(t+1))`` at round ``t`` (as Flower's
    FedAdam). Adaptive per-coordinate steps help when sites' updates differ in scale,
    which non-IID LoRA updates do.

    Parameters
    ----------
    eta : float (default: 0.1)
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
        eta: float = 1e-1,
        beta_1: float = 0.9,
        beta_2: float = 0.99,
        tau: float = 1e-3,
        **kwargs: object,
    ) -> None:
        super().__init__(eta=eta, beta_1=beta_1, beta_2=beta_2, tau=tau, **kwargs)

    def second_moment(self, v: np.ndarray, delta: np.ndarray) -> np.ndarray:
        """Exponential moving average of the squared pseudo-gradient."""
        return self.beta_2 * v + (1.0 - self.beta_2) * delta**2

    def step_size(self, server_round: int) -> float:
        """Bias-corrected learning rate (Kingma & Ba, 2015), indexed as in Flower."""
        t = server_round + 1.0
        return float(self.eta * np.sqrt(1.0 - self.beta_2**t) / (1.0 - self.beta_1**t))
