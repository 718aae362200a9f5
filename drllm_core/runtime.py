"""How the pipeline runs, as opposed to what it computes: params.yaml's `runtime` section.

No stage lists these params, so DVC does not hash them: moving the search onto Ray, changing thread counts,
batch sizes or the prefix cache budget reruns nothing and renames no checkpoint. They change speed and memory,
and results at most by floating-point rounding (a batch's padding and a cache miss reorder some sums).
"""

from __future__ import annotations

from dataclasses import dataclass

from drllm_core.errors import ConfigError, config_from


@dataclass(frozen=True)
class Runtime:
    search_backend: str = "local"  # local | ray
    ray_address: str | None = None  # Ray cluster to join (auto, ray://host:10001); None starts a local one
    workers: int | None = None  # Ray workers (None: one per GPU, else one per 2 CPUs)
    threads: int | None = None  # torch threads per process (None: torch's default locally, 1 per Ray worker)
    prefix_cache_mb: float = 1024.0  # memory per process for the prefix states one example's search reuses
    batch_size: int = 16  # questions per batched forward in features, calibrate and evaluate
    generation_batch_size: int = 64  # prompts per batched greedy generation in evaluate
    speed_prompts: int = 4  # evaluate's routed-vs-vanilla generation timing (metrics/timings/speed.json)
    speed_tokens: int = 32  # tokens each of its prompts generates
    mlflow_ui: str = "http://localhost:5000"  # where `make ui` serves MLflow, for the report's run links

    @classmethod
    def from_params(cls, params: dict) -> Runtime:
        return config_from(cls, "runtime", params.get("runtime") or {})

    def __post_init__(self):
        if self.search_backend not in ("local", "ray"):
            raise ConfigError(f"unknown runtime.search_backend {self.search_backend!r}; use local or ray")
        if self.prefix_cache_mb <= 0:
            raise ConfigError(
                f"runtime.prefix_cache_mb must be a positive number, got {self.prefix_cache_mb!r}"
            )
        for name in (
            "batch_size",
            "generation_batch_size",
            "speed_prompts",
            "speed_tokens",
            "workers",
            "threads",
        ):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"runtime.{name} must be a whole number of at least 1, got {value!r}")
