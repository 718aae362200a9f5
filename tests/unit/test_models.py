"""Model specs resolve to clear errors before any weights load; dtype and device rules."""

import pytest
import torch
from transformers import GPT2Config

from drllm_core.errors import ConfigError
from drllm_core.models import (
    ModelLoadError,
    ModelSpec,
    load_model,
    resolve_device,
    resolve_dtype,
    same_weights,
    weights_fingerprint,
    weights_sample,
)
from tests.conftest import tiny_model


def test_missing_gguf_file(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(str(tmp_path / "nothing.gguf"))


def test_corrupt_gguf_file(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file at all" * 10)
    with pytest.raises(ModelLoadError, match="incomplete or corrupt"):
        load_model(str(bad))


def test_a_gguf_cut_to_a_few_bytes(tmp_path):
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(b"GGUF\x03\x00\x00\x00\x10")  # the magic and a version, then nothing
    with pytest.raises(ModelLoadError, match="incomplete or corrupt"):
        load_model(str(cut))


def test_a_truncated_converted_model_says_to_delete_the_cache(tmp_path):
    tiny = tiny_model("llama")
    tiny.save_pretrained(tmp_path)
    from tests.conftest import tiny_tokenizer

    tiny_tokenizer().save_pretrained(tmp_path)
    (tmp_path / "drllm_source.json").write_text("{}")  # what the embedded conversion leaves beside it
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 3])
    with pytest.raises(ModelLoadError, match=f"delete {tmp_path} and run again"):
        load_model(str(tmp_path))


def test_folder_without_config(tmp_path):
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model(str(tmp_path))


def test_corrupt_weights_in_a_model_folder(tmp_path):
    tiny_model("llama").config.save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x00garbage" * 100)
    with pytest.raises(ModelLoadError, match="incomplete or corrupt"):
        load_model(str(tmp_path))


def test_unroutable_architecture_is_named(tmp_path):
    GPT2Config(n_layer=2, n_embd=32, n_head=2).save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match="'gpt2'.*cannot be routed"):
        load_model(str(tmp_path))


@pytest.mark.parametrize("spec", ["embedded:nope", "just some words", "./relative/missing"])
def test_unknown_specs(spec):
    with pytest.raises(ModelLoadError, match="unknown embedded model|neither an embedded model"):
        load_model(spec)


def test_unknown_params_keys_and_bad_types():
    with pytest.raises(ConfigError, match=r"unknown keys in params.yaml `model`: \['dtyp'\]"):
        ModelSpec.from_params({"spec": "x", "dtyp": "auto"})
    with pytest.raises(ConfigError, match="`model.trust_remote_code` must be true or false, got 'no'"):
        ModelSpec.from_params({"trust_remote_code": "no"})
    with pytest.raises(ModelLoadError, match="trust_remote_code must be true or false"):
        ModelSpec(trust_remote_code="yes")


def test_dtype_and_device_rules():
    cpu = torch.device("cpu")
    assert resolve_dtype("float32", cpu) is torch.float32
    assert resolve_dtype("auto", cpu) in (torch.bfloat16, torch.float32)
    with pytest.raises(ModelLoadError, match="unknown dtype"):
        resolve_dtype("int4", cpu)
    assert resolve_device("cpu") == cpu
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ModelLoadError, match="no CUDA GPU"):
            resolve_device("cuda")


def test_fingerprint_and_sample_ignore_dtype_but_not_weights():
    model = tiny_model("llama", seed=0)
    same = weights_fingerprint(model)
    assert weights_fingerprint(tiny_model("llama", seed=0).to(torch.bfloat16)) == same
    assert weights_fingerprint(tiny_model("llama", seed=1)) != same
    sample = weights_sample(model)
    for dtype in (torch.bfloat16, torch.float16):
        assert same_weights(weights_sample(tiny_model("llama", seed=0).to(dtype)), sample), dtype
    assert not same_weights(weights_sample(tiny_model("llama", seed=1)), sample)


def test_the_model_cache_is_anchored_at_the_project_root(tmp_path, monkeypatch):
    project = tmp_path / "project"
    (project / "pipeline").mkdir(parents=True)
    (project / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.chdir(project / "pipeline")  # a command run from a subfolder
    assert ModelSpec(cache_dir="models/base").cache_path() == project / "models" / "base"
    assert ModelSpec(cache_dir=str(tmp_path / "elsewhere")).cache_path() == tmp_path / "elsewhere"


def test_a_damaged_conversion_record_means_convert_again(tmp_path):
    from drllm_core.models import _converted_from

    marker = tmp_path / "drllm_source.json"
    assert _converted_from(marker) is None  # never converted
    marker.write_text('{"file": "x.gguf", "si')  # cut while written by an older version
    assert _converted_from(marker) is None
    marker.write_text('{"file": "x.gguf"}')
    assert _converted_from(marker) == {"file": "x.gguf"}
