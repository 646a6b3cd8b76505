"""Sample-level DP-SGD on the real tiny VLM with real Opacus, and its accounting."""

import logging

import dp_accounting
import pytest
import tiny_vlms
import torch
from dp_accounting import pld, rdp

from fedvlm.adapter import get_adapter_state, set_adapter_state, subtract
from fedvlm.batching import encode, score
from fedvlm.contract import dp_keys
from fedvlm.embedded.shapes import make_examples
from fedvlm.errors import ConfigError
from fedvlm.lora import LoraSettings, apply_lora
from fedvlm.training import take, train_local
from fedvlm.vlm import load_base, load_peft_model
from privacy.account_store import AccountStore
from privacy.accounting import BudgetExhaustedError
from privacy.dp_sgd import (
    make_private,
    poisson_sample_rate,
    require_per_example_gradients,
    train_local_dp,
)
from privacy.secure_noise import SecureRandom
from privacy.settings import PrivacySettings
from privacy.site_account import SiteAccount, SiteRefusalError

# absl logs every RDP order it skips; the test only needs the number.
logging.getLogger("absl").setLevel(logging.ERROR)


@pytest.fixture(scope="module")
def vlm():
    torch.set_num_threads(1)
    model, processor = load_peft_model("embedded", LoraSettings())
    initial = get_adapter_state(model)
    yield model, processor
    set_adapter_state(model, initial)


def test_no_noise_and_a_huge_clip_reproduce_the_non_dp_update():
    """Guard against silently corrupted LoRA updates (opacus issue 820).

    With q = 1 every Poisson batch is the whole set, so both runs see the same batches. The
    model is in float64: in float32, AdamW divides gradients that cancel to ~1e-9 by
    sqrt(v) + 1e-8, which turns summation-order rounding into update differences of ~1e-5
    on a few entries; in float64 the two updates agree to ~1e-14, so 1e-6 is a real check.
    """
    base, processor = load_base("embedded")
    model = apply_lora(base.double(), LoraSettings())
    examples = make_examples(6, seed=3)
    initial = get_adapter_state(model)
    train_local(model, processor, examples, steps=3, lr=1e-3, batch_size=6, seed=0)
    plain = subtract(get_adapter_state(model), initial)
    set_adapter_state(model, initial)
    stats = train_local_dp(
        model,
        processor,
        examples,
        steps=3,
        lr=1e-3,
        batch_size=6,
        noise_multiplier=0.0,
        max_grad_norm=1e6,
        rng_seed=0,
    )
    private = subtract(get_adapter_state(model), initial)
    assert stats.releases == [(0.0, 1.0, 3)]
    assert max(float(t.abs().max()) for t in plain.values()) > 1e-3  # the update is not empty
    for name in plain:
        assert torch.allclose(private[name], plain[name], atol=1e-6, rtol=0), name
    # The hooks are gone: the model trains and evaluates as before afterwards.
    assert not any(hasattr(p, "grad_sample") for p in model.parameters())


def test_every_per_sample_gradient_is_clipped_to_the_bound(vlm):
    """Each example alone in a batch: Opacus' per-sample gradient equals autograd's own
    gradient of that example, and its clipped version is exactly g * min(1, C / |g|) (norm
    <= C); a batch's clipped sum is the sum of those. Clipping is active for some examples
    and not for others, so a per-sample gradient scaled by any factor changes the result.
    Mutation: scale Opacus' grad_sample by 0.25 -> fails."""
    model, processor = vlm
    examples = make_examples(6, seed=5)
    data = encode(processor, examples)
    params = [p for p in model.parameters() if p.requires_grad]
    references, true_norms = [], []
    for i in range(len(examples)):  # plain autograd, no Opacus: the reference gradients
        loss, _ = score(model, take(data, torch.tensor([i])))
        references.append(torch.autograd.grad(loss.mean(), params))
        norm = torch.sqrt(sum((g.double() ** 2).sum() for g in references[-1]))
        true_norms.append(float(norm))
    clip = sorted(true_norms)[len(true_norms) // 2]  # the median: half clipped, half not
    engine, hooks, optimizer = make_private(
        model,
        len(examples),
        lr=1e-3,
        batch_size=4,
        noise_multiplier=0.0,
        max_grad_norm=clip,
        source=SecureRandom(0),
    )

    def clipped_sum(index: list[int]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        optimizer.zero_grad(set_to_none=True)
        loss, _ = score(model, take(data, torch.tensor(index)))
        loss.mean().backward()
        per_sample = [p.grad_sample.sum(0).clone() for p in params]
        optimizer.clip_and_accumulate()
        return [p.summed_grad.clone() for p in params], per_sample

    try:
        singles = []
        clipped_any = unclipped_any = False
        for i in range(len(examples)):
            summed, per_sample = clipped_sum([i])
            reference = references[i]
            factor = min(1.0, clip / true_norms[i])
            clipped_any |= factor < 0.99
            unclipped_any |= factor == 1.0
            for got, raw, ref in zip(summed, per_sample, reference, strict=True):
                assert torch.allclose(raw, ref, atol=1e-7, rtol=1e-3)
                assert torch.allclose(got, ref * factor, atol=1e-7, rtol=1e-3)
            out = float(torch.sqrt(sum((g.double() ** 2).sum() for g in summed)))
            assert out <= clip * (1 + 1e-5)
            singles.append(summed)
        assert clipped_any and unclipped_any
        batch, _ = clipped_sum(list(range(len(examples))))
        for k, got in enumerate(batch):
            expected = sum(single[k] for single in singles)
            assert torch.allclose(got, expected, atol=1e-6, rtol=1e-4)
    finally:
        hooks.cleanup()
        for p in params:
            p.grad = None
        model.eval()


def test_an_empty_poisson_batch_still_counts_as_a_noisy_step(vlm):
    model, processor = vlm
    initial = get_adapter_state(model)
    # q = 1/40: each step sees no example at all with probability (39/40)^40 ≈ 0.36.
    stats = train_local_dp(
        model,
        processor,
        make_examples(40, seed=6),
        steps=12,
        lr=1e-3,
        batch_size=1,
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        rng_seed=1,
    )
    moved = subtract(get_adapter_state(model), initial)
    set_adapter_state(model, initial)
    assert stats.empty_batches > 0
    assert stats.releases == [(1.0, 1 / 40, 12)]
    assert all(bool((t != 0).any()) for t in moved.values())  # noise reached every tensor


def _independent_epsilon(accountant: str, noise: float, rate: float, steps: int, delta: float):
    """The same mechanism through Google's dp-accounting (not Opacus)."""
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(rate, dp_accounting.GaussianDpEvent(noise)), steps
    )
    other = pld.PLDAccountant() if accountant == "prv" else rdp.RdpAccountant()
    return other.compose(event).get_epsilon(delta)


@pytest.mark.parametrize("accountant", ["prv", "rdp"])
def test_reported_epsilon_matches_an_independent_accountant(vlm, accountant, tmp_path):
    """Two rounds at a site, the account kept in its file between them."""
    model, processor = vlm
    initial = get_adapter_state(model)
    examples = make_examples(24, seed=7)
    settings = PrivacySettings.from_config(
        {"dp-mode": "sample", "dp-target-epsilon": 8.0, "dp-accountant": accountant}
    ).sample
    state = AccountStore(tmp_path / "site-0.json")
    for _ in range(2):
        account = SiteAccount.open(settings, state, {}, site=0)
        plan = account.begin_round(num_examples=24, batch_size=4, local_steps=3, planned_rounds=4)
        stats = train_local_dp(
            model,
            processor,
            examples,
            steps=3,
            lr=1e-3,
            batch_size=4,
            noise_multiplier=plan.noise_multiplier,
            max_grad_norm=1.0,
        )
        account.record(stats.releases)
        account.save(state)
    set_adapter_state(model, initial)
    reported = account.metrics(planned_steps=12)
    rate = poisson_sample_rate(24, 4)
    assert reported[dp_keys.STEPS] == 6 and reported[dp_keys.SAMPLE_RATE] == rate
    expected = _independent_epsilon(accountant, plan.noise_multiplier, rate, 6, 1e-5)
    assert reported[dp_keys.EPSILON] == pytest.approx(expected, rel=0.01)
    # The noise was calibrated once so that all 4 planned rounds spend the budget.
    projected = _independent_epsilon(accountant, plan.noise_multiplier, rate, 12, 1e-5)
    assert reported[dp_keys.PROJECTED_EPSILON] == pytest.approx(projected, rel=0.01)
    assert 0.95 * 8.0 <= reported[dp_keys.PROJECTED_EPSILON] <= 8.0 * 1.01


def test_a_round_that_would_exceed_the_budget_is_refused_before_training(tmp_path):
    settings = PrivacySettings.from_config(
        {"dp-mode": "sample", "dp-target-epsilon": 5.0, "dp-noise-multiplier": 1.0}
    ).sample
    state = AccountStore(tmp_path / "site-3.json")
    account = SiteAccount.open(settings, state, {}, site=3)
    account.begin_round(num_examples=96, batch_size=8, local_steps=16, planned_rounds=10)
    account.record([(1.0, 1 / 12, 16)])  # what Opacus counted for the round
    account.save(state)
    spent = account.epsilon()
    assert 0 < spent < 5.0
    again = SiteAccount.open(settings, state, {}, site=3)
    with pytest.raises(SiteRefusalError) as refusal:
        for _ in range(10):
            again.begin_round(num_examples=96, batch_size=8, local_steps=16, planned_rounds=10)
            again.record([(1.0, 1 / 12, 16)])
    assert refusal.value.code == dp_keys.OVER_BUDGET
    assert isinstance(refusal.value.cause, BudgetExhaustedError)
    assert "dp-target-epsilon" in str(refusal.value)
    assert again.history.steps >= 32  # it trained while the budget allowed
    assert spent < refusal.value.metrics[dp_keys.EPSILON] <= 5.0  # never past the budget
    # The coordinator's (longer) record wins over a site state that was lost.
    known = {
        dp_keys.KNOWN_SITE: [3],
        dp_keys.KNOWN_NOISE: [1.0],
        dp_keys.KNOWN_RATE: [1 / 12],
        dp_keys.KNOWN_STEPS: [again.history.steps],
    }
    fresh = SiteAccount.open(settings, AccountStore(tmp_path / "lost.json"), known, site=3)
    assert fresh.epsilon() == pytest.approx(again.epsilon())


def test_delta_at_or_above_one_over_n_is_refused_naming_the_key(tmp_path):
    settings = PrivacySettings.from_config(
        {"dp-mode": "sample", "dp-target-epsilon": 8.0, "dp-delta": 0.05}
    ).sample
    store = AccountStore(tmp_path / "site-0.json")
    account = SiteAccount(settings, SiteAccount.open(settings, store, {}, 0).history, 0)
    with pytest.raises(SiteRefusalError) as refusal:
        account.begin_round(num_examples=40, batch_size=8, local_steps=4, planned_rounds=2)
    assert refusal.value.code == dp_keys.MISCONFIGURED
    assert isinstance(refusal.value.cause, ConfigError) and refusal.value.cause.key == "dp-delta"


def test_dp_sgd_refuses_a_trained_projector_that_does_not_see_examples():
    """Idefics3 splits images into crops: its projector's rows are crops, not examples."""
    split, _ = tiny_vlms.build("idefics3")
    with pytest.raises(ConfigError) as err:
        require_per_example_gradients(apply_lora(split, LoraSettings(train_projector=True)))
    assert err.value.key == "train-projector"
    frozen, _ = tiny_vlms.build("idefics3")
    require_per_example_gradients(apply_lora(frozen, LoraSettings(train_projector=False)))
    llava, _ = tiny_vlms.build("llava")
    require_per_example_gradients(apply_lora(llava, LoraSettings(train_projector=True)))


def test_dp_sgd_refuses_vision_lora_where_the_vision_tower_sees_crops():
    """Finding: Idefics3's vision tower gets 20 crops for 4 examples, so Opacus would clip per
    crop. Mutation: drop the vision-tower check in require_per_example_gradients -> fails."""
    split, _ = tiny_vlms.build("idefics3")
    with pytest.raises(ConfigError) as err:
        require_per_example_gradients(
            apply_lora(split, LoraSettings(vision=True, train_projector=False))
        )
    assert err.value.key == "lora-vision"
    llava, _ = tiny_vlms.build("llava")  # one image per example: allowed
    require_per_example_gradients(apply_lora(llava, LoraSettings(vision=True)))


def test_personalised_evaluation_is_refused_under_sample_level_dp():
    """It would train plain steps on the training split and release the result outside any
    DP account. Mutation: drop _refuse_personalisation -> fails."""
    dp = {"dp-mode": "sample", "dp-target-epsilon": 8.0}
    with pytest.raises(ConfigError) as err:
        PrivacySettings.from_config({**dp, "eval-personalise-steps": 2})
    assert err.value.key == "eval-personalise-steps"
    assert PrivacySettings.from_config({**dp, "eval-personalise-steps": 0}).sample is not None
    PrivacySettings.from_config({"dp-mode": "none", "eval-personalise-steps": 2})
