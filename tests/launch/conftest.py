"""Fixtures shared by the tests that drive Ray Tune directly."""

from __future__ import annotations

import pytest


@pytest.fixture
def local_ray():
    """A local 2-CPU Ray for one test, shut down after it."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
