"""FedProx (Li et al., 2020): FedAvg on the server, a proximal term on the clients."""

from flwr.serverapp.strategy import FedProx as FlowerFedProx

from strategies.fedavg import FedAvg


class FedProx(FedAvg, FlowerFedProx):
    r"""FedAvg on updates, plus Flower's FedProx configuration.

    The server side is exactly `FedAvg` (linear in the updates). Flower's FedProx
    ``configure_train`` adds ``"proximal-mu"`` to the train ConfigRecord; each client
    then adds :math:`\frac{\mu}{2} \lVert w - w^t \rVert^2` over its trainable adapter
    tensors to its local loss, which pulls non-IID sites towards the global adapter.

    Parameters
    ----------
    proximal_mu : float (default: 0.0)
        Weight of the proximal term (0.0 makes FedProx FedAvg).
    max_update_norm, clip_update_norm : float or None
        See `AdapterStrategy`.
    **fedavg_kwargs
        Sampling settings passed to Flower's `FedAvg`.
    """
