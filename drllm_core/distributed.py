"""A map over Ray workers: items sharded over actors, one GPU each when the cluster has GPUs.

`address` joins an existing cluster (`auto`, or `ray://host:10001`); None starts a local Ray instance for
the map and stops it afterwards. Every actor builds its function once (e.g. loads a model) and pins its
torch thread count. Results come back as they finish, in any order.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch

from drllm_core.errors import ConfigError


class _Worker:
    def __init__(self, make_function: Callable[[], Callable[[Any], Any]], threads: int):
        torch.set_num_threads(threads)
        self.function = make_function()

    def run(self, item):
        return self.function(item)


def check_capacity(workers: int, threads: int, gpus: int, cpus: int) -> None:
    """Refuse workers the cluster cannot place: Ray would leave them pending and the map would wait forever."""
    if gpus and workers > gpus:
        raise ConfigError(
            f"runtime.workers asks for {workers} Ray workers of one GPU each, the cluster has {gpus} GPUs: "
            "lower runtime.workers or set it to null (one per GPU)"
        )
    if workers * threads > cpus:
        raise ConfigError(
            f"{workers} Ray workers x {threads} threads (runtime.workers, runtime.threads) need "
            f"{workers * threads} CPUs, the cluster has {cpus}: lower runtime.threads or runtime.workers"
        )


def ray_map(
    make_function: Callable[[], Callable[[Any], Any]],
    items: Iterable,
    address: str | None = None,
    workers: int | None = None,
    threads: int | None = None,
) -> Iterator:
    """`make_function()(item)` for every item, on Ray actors (None: one per GPU, else one per 2 CPUs)."""
    import ray
    from ray.util import ActorPool

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a local instance needs no token
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address or None, include_dashboard=False, logging_level="warning")
    actors = []
    try:
        resources = ray.cluster_resources()
        gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 1))
        threads = threads or 1
        workers = workers or (gpus or max(1, cpus // max(threads, 2)))
        check_capacity(workers, threads, gpus, cpus)
        worker_class = ray.remote(num_cpus=threads, num_gpus=1 if gpus else 0)(_Worker)
        actors = [worker_class.remote(make_function, threads) for _ in range(workers)]
        yield from ActorPool(actors).map_unordered(lambda actor, item: actor.run.remote(item), list(items))
    finally:
        for actor in actors:  # also on an error, and on a cluster this map only joined
            ray.kill(actor)
        if started_here:
            ray.shutdown()
