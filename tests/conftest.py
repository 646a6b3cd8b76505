"""Fixtures more than one test file needs."""

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager

import pytest
from peft import PeftModel

from fedvlm.adapter import get_adapter_state, set_adapter_state
from fedvlm.vlm import load_peft_model
from simulations.in_process import serverapp_identity as identity


@pytest.fixture
def serverapp_identity():
    """The process identity Flower's ServerApp runtime sets, restored afterwards.

    Building a ``Message`` reads it, so a test that builds messages outside Flower's runtime
    asks for this fixture (or marks its module ``usefixtures("serverapp_identity")``).
    """
    with identity():
        yield


@contextmanager
def _restored(model: PeftModel) -> Iterator[PeftModel]:
    """Give `model` back as it was: adapter values, trainable flags and train/eval mode."""
    adapter = get_adapter_state(model)
    trainable = {name: p.requires_grad for name, p in model.named_parameters()}
    training = model.training
    try:
        yield model
    finally:
        set_adapter_state(model, adapter)
        for name, p in model.named_parameters():
            p.requires_grad_(trainable[name])
        model.train(training)


@pytest.fixture
def cached_peft_model() -> Iterator[Callable[..., tuple]]:
    """`load_peft_model` for a test that changes the model, restored in `finally`.

    Why: `fedvlm.vlm.load_peft_model` is an `lru_cache` shared by every test of the process
    (reloading the base per test would cost minutes); a test that trains or overwrites the
    cached adapter must not leak that into the tests after it, also when it fails.
    """
    with ExitStack() as stack:

        def load(*args, **kwargs) -> tuple:
            model, processor = load_peft_model(*args, **kwargs)
            stack.enter_context(_restored(model))
            return model, processor

        yield load


@pytest.fixture(autouse=True)
def site_state_dir(tmp_path_factory, monkeypatch):
    """Each test's sites keep their privacy account files in a fresh directory of their
    own (`privacy.account_store`), never in the user's home; subprocesses inherit it."""
    path = tmp_path_factory.mktemp("site-state")
    monkeypatch.setenv("FEDVLM_STATE_DIR", str(path))
    return path
