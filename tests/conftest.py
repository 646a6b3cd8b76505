"""Fixtures more than one test file needs."""

import pytest

from simulations.in_process import serverapp_identity as identity


@pytest.fixture
def serverapp_identity():
    """The process identity Flower's ServerApp runtime sets, restored afterwards.

    Building a ``Message`` reads it, so a test that builds messages outside Flower's runtime
    asks for this fixture (or marks its module ``usefixtures("serverapp_identity")``).
    """
    with identity():
        yield
