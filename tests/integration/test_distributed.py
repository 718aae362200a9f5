"""The generic Ray map on a real local Ray instance: results of every item, and no actor left alive (holding
its CPU) after an error on a cluster the map only joined."""

import os
import time

import pytest


def _doubler():
    def double(item):
        if item == 3:
            raise ValueError("item 3 is bad")
        return 2 * item

    return double


def test_ray_map_returns_every_result_and_kills_its_actors_on_an_error():
    import ray

    from drllm_core.distributed import ray_map

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="warning")  # a cluster the map joins
    try:
        assert sorted(ray_map(_doubler, [0, 1, 2], workers=2)) == [0, 2, 4]
        with pytest.raises(ValueError, match="item 3 is bad"):
            list(ray_map(_doubler, [1, 3, 5], workers=2))
        assert ray.is_initialized()  # it did not stop a cluster it did not start
        deadline = time.time() + 30  # ray.kill takes effect asynchronously; a killed actor frees its CPU
        while ray.available_resources().get("CPU", 0) < 2 and time.time() < deadline:
            time.sleep(0.5)
        assert ray.available_resources().get("CPU", 0) == 2, "an actor of the failed map is still alive"
    finally:
        ray.shutdown()
