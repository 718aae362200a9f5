"""The path engine on the real embedded default model (SmolLM2-135M-Instruct)."""

import os

import torch

from drllm_core.engine import PathEngine
from drllm_core.models import EMBEDDED_MODELS, ModelSpec, load_model
from drllm_core.paths import LayerPath

PROMPTS = ["Question: Which gas do plants take in from the air?\nAnswer:", "The capital of France is"]


def _fp32():
    return load_model(
        ModelSpec(dtype="float32", cache_dir=os.environ.get("DRLLM_MODEL_CACHE", "models/base"))
    )


def test_embedded_default_is_converted_once_to_safetensors(default_model):
    folder = default_model.spec.cache_dir + "/smollm2-135m-instruct"
    assert os.path.isfile(folder + "/model.safetensors")
    assert default_model.num_layers == 30 and default_model.name in EMBEDDED_MODELS
    assert default_model.model.config.model_type == "llama"
    assert all(not p.requires_grad for p in default_model.model.parameters())


def test_default_path_is_exact_on_a_padded_fp32_batch():
    loaded = _fp32()
    loaded.tokenizer.padding_side = "right"
    batch = loaded.tokenizer(PROMPTS, return_tensors="pt", padding=True)
    positions = (batch.attention_mask.cumsum(-1) - 1).clamp(min=0)
    expected = loaded.model(**batch, position_ids=positions).logits
    got = PathEngine(loaded.model).forward(batch.input_ids, attention_mask=batch.attention_mask)
    real = batch.attention_mask.bool()
    assert torch.equal(got[real], expected[real])


def test_generation_under_mixed_paths_matches_recomputation():
    loaded = _fp32()
    tokenizer = loaded.tokenizer
    tokenizer.padding_side = "left"
    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    layers = loaded.num_layers
    paths = [
        LayerPath.default(layers).with_count(4, 0).with_count(5, 0).with_count(12, 2),
        LayerPath.default(layers).with_count(20, 0).with_count(2, 2),
    ]
    engine = PathEngine(loaded.model)
    out = engine.generate(batch.input_ids, paths, batch.attention_mask, max_new_tokens=10, keep_logits=True)
    sequence = torch.cat([batch.input_ids, out.tokens], dim=1)
    mask = torch.cat([batch.attention_mask, torch.ones_like(out.tokens)], dim=1)
    recomputed = engine.forward(sequence, paths, attention_mask=mask)
    width = batch.input_ids.shape[1]
    for step, logits in enumerate(out.step_logits):
        torch.testing.assert_close(logits, recomputed[:, width - 1 + step], rtol=1e-3, atol=1e-3)
    default = engine.generate(batch.input_ids, None, batch.attention_mask, max_new_tokens=10).tokens
    reference = loaded.model.generate(**batch, max_new_tokens=10, do_sample=False)[:, width:]
    assert torch.equal(default, reference)
