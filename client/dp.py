"""What differential privacy changes at a site: how it trains and what its update may be.

- ``dp-mode = "sample"``: DP-SGD (Opacus) instead of plain training, after checking this
  round against the site's ε budget; the account is kept in a node-local file that outlives
  the Flower run (`privacy.account_store`), written before the update leaves, and reported.
- ``dp-mode = "client"``: the update is clipped to ``dp-client-clip`` before it leaves (and
  before any secure-aggregation masking); the coordinator adds the noise.
"""

from collections.abc import Mapping, Sequence
from typing import Any

from flwr.app import Context

from fedvlm import contract
from fedvlm.adapter import Adapter
from fedvlm.config import RunSettings
from fedvlm.contract import dp_keys
from fedvlm.data.example import VQAExample
from fedvlm.errors import ConfigError
from fedvlm.training import TrainStats, train_local
from privacy.account_store import AccountStore
from privacy.client_level import clip_update
from privacy.dp_sgd import require_per_example_gradients, train_local_dp
from privacy.settings import PrivacySettings
from privacy.site_account import SiteAccount, SiteRefusalError, site_key


def train_with_privacy(
    context: Context,
    config: Mapping[str, Any],
    run: RunSettings,
    model,
    processor,
    examples: Sequence[VQAExample],
    *,
    seed: int,
    reference: Adapter,
    message_id: str = "",
) -> tuple[TrainStats, dict[str, Any]]:
    """Train for this round, privately if the run says so; return stats and DP metrics.

    ``message_id`` keys the sample-level account's round, so that a retried message (a site
    worker that died before its reply left) is accounted once (`privacy.account_store`).

    Raises
    ------
    privacy.site_account.SiteRefusalError
        Under sample-level DP, when this round would exceed the site's budget or the
        site's data makes the settings invalid (δ ≥ 1/n); nothing was trained.
    """
    privacy = PrivacySettings.from_config(context.run_config)
    steps = int(config[contract.LOCAL_STEPS])
    lr = float(config[contract.LEARNING_RATE])
    batch_size = int(config[contract.BATCH_SIZE])
    if privacy.sample is None:
        stats = train_local(
            model,
            processor,
            examples,
            steps=steps,
            lr=lr,
            batch_size=batch_size,
            seed=seed,
            proximal_mu=float(config.get(contract.PROXIMAL_MU, 0.0)),
            reference=reference,
        )
        return stats, {}
    site = site_key(context.node_config, context.node_id)
    store = AccountStore.for_site(
        context.node_config, str(config.get(dp_keys.FEDERATION, "")), site
    )
    account = SiteAccount.open(privacy.sample, store, config, site, message_id)
    try:
        require_per_example_gradients(model)
    except ConfigError as err:
        metrics = {contract.NUM_EXAMPLES: len(examples), **account.metrics(0)}
        raise SiteRefusalError(dp_keys.MISCONFIGURED, err, metrics) from err
    plan = account.begin_round(
        num_examples=len(examples),
        batch_size=batch_size,
        local_steps=steps,
        planned_rounds=run.num_rounds,
    )
    stats = train_local_dp(
        model,
        processor,
        examples,
        steps=steps,
        lr=lr,
        batch_size=batch_size,
        noise_multiplier=plan.noise_multiplier,
        max_grad_norm=privacy.sample.max_grad_norm,
    )
    account.record(stats.releases)
    account.save(store)  # before the update can leave: a crash after release keeps the steps
    # The number of empty Poisson batches is not sent: it is a function of the secret sampling.
    return stats, account.metrics(run.num_rounds * steps)


def protect_update(run_config: Mapping[str, Any], update: Adapter) -> Adapter:
    """Clip the update to ``dp-client-clip`` under client-level DP; else return it as is."""
    privacy = PrivacySettings.from_config(run_config)
    if privacy.client is None:
        return update
    clipped, _ = clip_update(update, privacy.client.clip)
    return clipped
