"""The Ray backend of the search: examples sharded over workers, one GPU each when the cluster has GPUs.

`search.ray_address` joins an existing cluster (`auto`, or `ray://host:10001`); empty starts a local Ray
instance for the run and stops it afterwards. Every worker loads the model once and pins its torch thread
count; each example is seeded from (seed, example id), so results do not depend on which worker ran it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import torch

from drllm_core.errors import ConfigError
from drllm_core.search_runner import ExampleSearcher, RunnerConfig
from drllm_core.tasks.schema import Example


class _Worker:
    def __init__(self, make_searcher: Callable[[], ExampleSearcher], threads: int):
        torch.set_num_threads(threads)
        self.searcher = make_searcher()

    def search(self, example: Example) -> dict:
        return self.searcher(example)


def check_capacity(workers: int, threads: int, gpus: int, cpus: int) -> None:
    """Refuse workers the cluster cannot place: Ray would leave them pending and the search would wait forever."""
    if gpus and workers > gpus:
        raise ConfigError(
            f"search.workers asks for {workers} Ray workers of one GPU each, the cluster has {gpus} GPUs: "
            "lower search.workers or set it to null (one per GPU)"
        )
    if workers * threads > cpus:
        raise ConfigError(
            f"{workers} Ray workers x {threads} threads (search.workers, search.threads) need {workers * threads} "
            f"CPUs, the cluster has {cpus}: lower search.threads or search.workers"
        )


def run_ray(
    examples: list[Example], make_searcher: Callable[[], ExampleSearcher], runner: RunnerConfig
) -> Iterator[dict]:
    import ray
    from ray.util import ActorPool

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a local instance needs no token
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=runner.ray_address or None, include_dashboard=False, logging_level="warning")
    try:
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        threads = runner.threads or 1
        cpus = int(resources.get("CPU", 1))
        workers = runner.workers or (gpus or max(1, cpus // max(threads, 2)))
        check_capacity(workers, threads, gpus, cpus)
        worker_class = ray.remote(num_cpus=threads, num_gpus=1 if gpus else 0)(_Worker)
        actors = [worker_class.remote(make_searcher, threads) for _ in range(workers)]
        pool = ActorPool(actors)
        yield from pool.map_unordered(lambda actor, example: actor.search.remote(example), examples)
        for actor in actors:
            ray.kill(actor)
    finally:
        if started_here:
            ray.shutdown()
