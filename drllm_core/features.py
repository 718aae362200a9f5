"""Router inputs along labelled paths, computed once (teacher forcing, as in the paper).

The model follows each example's labelled path while the router inputs are recorded, so router l learns from
the hidden state the labelled decisions before it produce. Because the base model is frozen and the decisions
are discrete, those inputs are computed once and training needs no LLM forward per epoch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from drllm_core.engine import token_batch
from drllm_core.routers import pool_windows
from drllm_core.tasks.schema import Example
from drllm_core.tasks.scorer import ExampleScorer


@torch.no_grad()
def build_features(
    scorer: ExampleScorer, examples: Sequence[Example], labels: Tensor, windows: int, batch_size: int = 16
) -> tuple[Tensor, Tensor]:
    """Pooled router inputs along each example's labelled path: features (N, L, W, D), window mask (N, W).
    The hidden state entering layer l is pooled over the prompt tokens, then layer l runs with its label."""
    engine = scorer.engine
    features, masks = [], []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        ids, mask = token_batch([scorer.prompt_ids(e) for e in chunk], scorer.tokenizer.pad_token_id)
        chunk_labels = labels[start : start + batch_size].clone()
        pooled_per_layer: list[Tensor] = []
        window_mask = None

        def record(
            layer: int, hidden: Tensor, mask=mask, store=pooled_per_layer, chunk_labels=chunk_labels
        ) -> Tensor:
            nonlocal window_mask
            pooled, window_mask = pool_windows(hidden, mask.bool(), windows)
            store.append(pooled.to(torch.bfloat16).cpu())
            return chunk_labels[:, layer]

        engine.run(engine.embed(ids, mask), chunk_labels, decide=record)
        features.append(torch.stack(pooled_per_layer, dim=1))  # (B, L, W, D)
        masks.append(window_mask.cpu())
    return torch.cat(features), torch.cat(masks)
