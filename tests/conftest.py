"""Shared fixtures: tiny randomly initialised models of every supported family (no downloads) for the unit
tests, and the real embedded default model for the integration tests."""

from __future__ import annotations

import importlib
import io
import os
import subprocess
from contextlib import redirect_stderr, redirect_stdout

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    Gemma3TextConfig,
    LlamaConfig,
    MistralConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen3Config,
)
from transformers.convert_slow_tokenizer import bytes_to_unicode

from drllm_core.models import LoadedModel, ModelSpec
from drllm_core.paths import LayerPath

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
torch.set_num_threads(min(2, os.cpu_count() or 1))


def run_stage(stage: str, *args) -> subprocess.CompletedProcess:
    """`pipeline.<stage>.main(args)` in this process, as `python -m pipeline.<stage>` runs it: the exit
    status and what it printed. An exception other than the user errors it reports propagates: a stage must
    never end in a traceback."""
    module = importlib.import_module(f"pipeline.{stage}")
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = module.main([str(a) for a in args])
    return subprocess.CompletedProcess([stage, *map(str, args)], code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="session", autouse=True)
def mlflow_store(tmp_path_factory):
    """Every test logs to a store of its own session, never to the repository's mlflow.db (a test that
    starts a server points MLFLOW_TRACKING_URI there itself). Session-wide, so that module fixtures that
    register models also run against it."""
    if "MLFLOW_TRACKING_URI" in os.environ and not os.environ["MLFLOW_TRACKING_URI"].startswith("sqlite"):
        yield
        return
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path_factory.getbasetemp() / 'mlflow.db'}")
        yield


_COMMON = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=6,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=260,  # 256 byte tokens + the specials of tiny_tokenizer()
    max_position_embeddings=512,
    pad_token_id=256,
    bos_token_id=257,
    eos_token_id=258,
)
TINY_CONFIGS = {
    "llama": lambda: LlamaConfig(**_COMMON),
    "qwen2": lambda: Qwen2Config(**_COMMON),
    "qwen3": lambda: Qwen3Config(**_COMMON, head_dim=16),
    "mistral": lambda: MistralConfig(**_COMMON, sliding_window=7),
    # alternating sliding (window 5) and full attention layers, as in Gemma 3
    "gemma3": lambda: Gemma3TextConfig(
        **_COMMON,
        head_dim=16,
        sliding_window=5,
        layer_types=["sliding_attention", "full_attention"] * 3,
        final_logit_softcapping=30.0,
    ),
}


def tiny_model(family: str, seed: int = 0):
    torch.manual_seed(seed)
    config = TINY_CONFIGS[family]()
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa", dtype=torch.float32)
    return model.eval().requires_grad_(False)


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A real byte-level tokenizer (one token per byte, no merges) with a chat template; built offline."""
    vocab = {char: index for index, char in enumerate(bytes_to_unicode().values())}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(["<pad>", "<s>", "</s>"])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )
    assert tokenizer.convert_tokens_to_ids(["<pad>", "<s>", "</s>"]) == [256, 257, 258]
    tokenizer.chat_template = (
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</s>{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    return tokenizer


def tiny_loaded(family: str = "llama", seed: int = 0) -> LoadedModel:
    """A tiny random model with a real tokenizer, shaped like what load_model returns."""
    return LoadedModel(
        tiny_model(family, seed), tiny_tokenizer(), ModelSpec(spec=f"tiny:{family}"), f"tiny-{family}"
    )


@pytest.fixture(params=sorted(TINY_CONFIGS))
def family_model(request):
    return tiny_model(request.param)


def reordered_model_logits(model, counts, ids, attention_mask=None):
    """Independent reference: rebuild the model's layer list in path order and call model(...) itself."""
    layers = model.model.layers
    config = model.config
    order = LayerPath(tuple(counts)).order
    saved = (layers, config.num_hidden_layers, getattr(config, "layer_types", None))
    try:
        model.model.layers = nn.ModuleList([layers[i] for i in order])
        config.num_hidden_layers = len(order)
        if saved[2] is not None:
            config.layer_types = [saved[2][i] for i in order]
        return model(input_ids=ids, attention_mask=attention_mask, use_cache=False).logits
    finally:
        model.model.layers, config.num_hidden_layers = saved[0], saved[1]
        if saved[2] is not None:
            config.layer_types = saved[2]


@pytest.fixture(scope="session")
def default_model():
    """The real embedded default (SmolLM2-135M-Instruct), loaded once per test session."""
    from drllm_core.models import ModelSpec, load_model

    return load_model(ModelSpec(cache_dir=os.environ.get("DRLLM_MODEL_CACHE", "models/base")))


def tiny_cost_routers(loaded: LoadedModel, bias: list[float], routing=None):
    """A cost router for tiny_loaded's 6 layers: decides at layer 2 among layers 3-5, predicting `bias` as
    each candidate's log cost for every input (its weights start at zero), on the knob scale [-4, 2]."""
    from drllm_core.models import weights_fingerprint
    from drllm_core.routers import RouterSet
    from drllm_core.routing import RouterConfig, Routing

    config = RouterConfig(
        6,
        64,
        windows=4,
        kind="costs",
        decision_layer=2,
        candidates=[3, 4, 5],
        rank=2,
        base_fingerprint=weights_fingerprint(loaded.model),
        routing=routing or Routing(),
    )
    routers = RouterSet(config)
    with torch.no_grad():
        routers.cost.bias.copy_(torch.tensor(bias))
        routers.cost.quantiles.copy_(torch.linspace(-4, 2, 101))
    return routers
