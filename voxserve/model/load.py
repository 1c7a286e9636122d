"""Checkpoints in, checkpoints out: Hugging Face directories, openai-whisper ``.pt`` files and hub ids.

The model is built on the meta device and the weights are attached by assignment from memory-mapped files, so a
large-v3 checkpoint loads without a second copy in memory. Names are translated between the two public layouts
and voxserve's own module names in one table each way.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from ..config import ModelDims, resolve_dtype
from .layers import sinusoids
from .whisper import Whisper, default_alignment_heads


class ModelLoadError(RuntimeError):
    """A checkpoint could not be found, fetched or understood; the message says what to do."""


@dataclass(frozen=True)
class CheckpointInfo:
    source: str  # what the user asked for (path or hub id)
    format: str  # "hf" or "openai"
    directory: Path | None  # where tokenizer files may live next to the weights
    alignment_heads: tuple[tuple[int, int], ...] | None = None
    suppress_tokens: tuple[int, ...] | None = None
    begin_suppress_tokens: tuple[int, ...] | None = None
    generation: dict[str, Any] = field(default_factory=dict)


# (pattern in a Hugging Face name, replacement giving voxserve's name); applied in order.
_HF_TO_NATIVE = [
    (r"^model\.", ""),
    (r"^encoder\.embed_positions\.weight$", "encoder.positional_embedding"),
    (r"^decoder\.embed_positions\.weight$", "decoder.positional_embedding"),
    (r"^decoder\.embed_tokens\.", "decoder.token_embedding."),
    (r"^encoder\.layer_norm\.", "encoder.ln_post."),
    (r"^decoder\.layer_norm\.", "decoder.ln."),
    (r"\.self_attn_layer_norm\.", ".attn_ln."),
    (r"\.encoder_attn_layer_norm\.", ".cross_attn_ln."),
    (r"\.final_layer_norm\.", ".mlp_ln."),
    (r"\.self_attn\.", ".attn."),
    (r"\.encoder_attn\.", ".cross_attn."),
    (r"\.q_proj\.", ".query."),
    (r"\.k_proj\.", ".key."),
    (r"\.v_proj\.", ".value."),
    (r"\.out_proj\.", ".out."),
]
_NATIVE_TO_HF = [
    (r"^encoder\.positional_embedding$", "encoder.embed_positions.weight"),
    (r"^decoder\.positional_embedding$", "decoder.embed_positions.weight"),
    (r"^decoder\.token_embedding\.", "decoder.embed_tokens."),
    (r"^encoder\.ln_post\.", "encoder.layer_norm."),
    (r"^decoder\.ln\.", "decoder.layer_norm."),
    (r"\.attn_ln\.", ".self_attn_layer_norm."),
    (r"\.cross_attn_ln\.", ".encoder_attn_layer_norm."),
    (r"\.mlp_ln\.", ".final_layer_norm."),
    (r"\.cross_attn\.", ".encoder_attn."),
    (r"\.attn\.", ".self_attn."),
    (r"\.query\.", ".q_proj."),
    (r"\.key\.", ".k_proj."),
    (r"\.value\.", ".v_proj."),
    (r"\.out\.", ".out_proj."),
    (r"^", "model."),
]
_OPENAI_TO_NATIVE = [(r"\.blocks\.", ".layers."), (r"\.mlp\.0\.", ".fc1."), (r"\.mlp\.2\.", ".fc2.")]
_NATIVE_TO_OPENAI = [(r"\.layers\.", ".blocks."), (r"\.fc1\.", ".mlp.0."), (r"\.fc2\.", ".mlp.2.")]


def _rename(name: str, table: list[tuple[str, str]]) -> str:
    for pattern, repl in table:
        name = re.sub(pattern, repl, name)
    return name


# --------------------------------------------------------------------------------------------- loading


def load_checkpoint(
    source: str | Path, *, device: str | torch.device = "cpu", dtype: str | torch.dtype = "float32"
) -> tuple[Whisper, CheckpointInfo]:
    """Load a Whisper checkpoint: an HF directory, an openai ``.pt`` file, or a hub id such as
    ``openai/whisper-large-v3`` (downloaded through huggingface_hub, or taken from its local cache)."""
    path = Path(source).expanduser()
    if path.is_dir():
        return _load_hf_dir(path, str(source), device, resolve_dtype(dtype))
    if path.is_file():
        if path.suffix in (".pt", ".pth", ".bin"):
            return _load_openai_pt(path, str(source), device, resolve_dtype(dtype))
        raise ModelLoadError(
            f"{path}: not a model; pass a Hugging Face model directory or an openai-whisper .pt file"
        )
    if _looks_like_hub_id(str(source)):
        return _load_hf_dir(_download(str(source)), str(source), device, resolve_dtype(dtype))
    raise ModelLoadError(f"model not found: {source} (no such file or directory)")


def _looks_like_hub_id(s: str) -> bool:
    return re.fullmatch(r"[A-Za-z0-9][\w.\-]*/[\w.\-]+", s) is not None and not s.startswith((".", "/"))


def _download(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    patterns = ["*.json", "*.safetensors", "*.txt", "*.tiktoken"]
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns, local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, OSError):
        pass
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except RepositoryNotFoundError:
        raise ModelLoadError(
            f"model {repo_id!r} is neither a local path nor a model on the Hugging Face hub"
        ) from None
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as e:
        raise ModelLoadError(
            f"{repo_id!r} is not a local path and could not be downloaded from the Hugging Face hub "
            f"({type(e).__name__}); without network access pass a local path: a model directory "
            "(config.json + model.safetensors) or an openai-whisper .pt file"
        ) from None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"{path}: unreadable JSON ({e})") from None


def _hf_weight_files(directory: Path) -> list[Path]:
    single = directory / "model.safetensors"
    if single.is_file():
        return [single]
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ModelLoadError(f"{index}: no 'weight_map'; not a safetensors shard index")
        shards = sorted(set(weight_map.values()))
        missing = [s for s in shards if not (directory / s).is_file()]
        if missing:
            raise ModelLoadError(f"{directory}: shards listed in the index are missing: {missing}")
        return [directory / s for s in shards]
    if (directory / "pytorch_model.bin").is_file():
        return [directory / "pytorch_model.bin"]
    raise ModelLoadError(f"{directory}: no model.safetensors, sharded index or pytorch_model.bin found")


def _load_hf_dir(
    directory: Path, source: str, device: Any, dtype: torch.dtype
) -> tuple[Whisper, CheckpointInfo]:
    if not (directory / "config.json").is_file():
        raise ModelLoadError(f"{directory}: no config.json; not a Hugging Face model directory")
    config = _read_json(directory / "config.json")
    gen_path = directory / "generation_config.json"
    generation = _read_json(gen_path) if gen_path.is_file() else {}
    if not isinstance(generation, dict):
        raise ModelLoadError(f"{gen_path}: expected a JSON object")
    _check_whisper_config(directory, config)
    try:
        dims = ModelDims.from_hf_config(config, generation)
    except ValueError as e:
        raise ModelLoadError(f"{directory}: {e}") from None
    state: dict[str, Tensor] = {}
    for f in _hf_weight_files(directory):
        for k, v in _read_weights(f).items():
            state[_rename(k, _HF_TO_NATIVE)] = v
    # The output projection is tied to the token embedding; files written without weight de-duplication
    # carry a copy, which must really be a copy (an untied projection would silently change every logit).
    proj = state.pop("proj_out.weight", None)
    embed = state.get("decoder.token_embedding.weight")
    if proj is not None and embed is not None and not torch.equal(proj, embed):
        raise ModelLoadError(
            f"{directory}: proj_out.weight differs from the token embedding; untied output projections "
            "are not supported (Whisper ties them)"
        )
    model = _assemble(dims, state, device, dtype, source)
    try:
        heads = generation.get("alignment_heads")
        info = CheckpointInfo(
            source=source,
            format="hf",
            directory=directory,
            alignment_heads=tuple((int(a), int(b)) for a, b in heads) if heads else None,
            suppress_tokens=_tuple_or_none(generation.get("suppress_tokens", config.get("suppress_tokens"))),
            begin_suppress_tokens=_tuple_or_none(
                generation.get("begin_suppress_tokens", config.get("begin_suppress_tokens"))
            ),
            generation=generation,
        )
    except (TypeError, ValueError):
        raise ModelLoadError(
            f"{directory}: malformed alignment_heads or suppress lists in generation_config.json / config.json "
            "(expected [[layer, head], ...] and lists of token ids)"
        ) from None
    if info.alignment_heads:
        try:
            model.set_alignment_heads(list(info.alignment_heads))
        except ValueError as e:
            raise ModelLoadError(f"{gen_path}: {e}") from None
    return model, info


def _check_whisper_config(directory: Path, config: dict[str, Any]) -> None:
    """Refuse configs that name another architecture or a Whisper variant this model does not compute
    (their weights might even have the right shapes, and would then load into wrong outputs)."""
    if not isinstance(config, dict):
        raise ModelLoadError(f"{directory}/config.json: expected a JSON object")
    kind = config.get("model_type")
    if kind is not None and kind != "whisper":
        raise ModelLoadError(f"{directory}: config.json describes a {kind!r} model, not Whisper")
    unsupported = []
    if config.get("scale_embedding", False):
        unsupported.append("scale_embedding=true")
    if config.get("activation_function", "gelu") != "gelu":
        unsupported.append(f"activation_function={config['activation_function']!r}")
    if config.get("tie_word_embeddings", True) is False:
        unsupported.append("tie_word_embeddings=false")
    if unsupported:
        raise ModelLoadError(f"{directory}: unsupported Whisper variant ({', '.join(unsupported)})")


def _read_weights(f: Path) -> dict[str, Tensor]:
    """Tensors of one weight file, memory-mapped (safetensors' own mapping, torch.load's mmap=True)."""
    try:
        if f.suffix == ".safetensors":
            with safe_open(str(f), framework="pt") as sf:
                return {k: sf.get_tensor(k) for k in sf.keys()}
        state = torch.load(f, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # safetensors and torch raise many types for truncated or foreign files
        raise ModelLoadError(f"{f}: unreadable weight file ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ModelLoadError(f"{f}: not a state dict of tensors")
    return state


def _tuple_or_none(x: Any) -> tuple[int, ...] | None:
    return None if x is None else tuple(int(i) for i in x)


def _load_openai_pt(
    path: Path, source: str, device: Any, dtype: torch.dtype
) -> tuple[Whisper, CheckpointInfo]:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # torch raises many types for bad pickles / zip files
        # Files in torch's legacy (pre-zip) format cannot be memory-mapped but still load, with a copy.
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ModelLoadError(
                f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}: {e})"
            ) from None
    if not isinstance(ckpt, dict) or "dims" not in ckpt or "model_state_dict" not in ckpt:
        raise ModelLoadError(
            f"{path}: not an openai-whisper checkpoint (expected 'dims' and 'model_state_dict'); for a "
            "Hugging Face checkpoint pass its directory"
        )
    try:
        dims = ModelDims.from_openai(ckpt["dims"])
    except ValueError as e:
        raise ModelLoadError(f"{path}: {e}") from None
    state = {_rename(k, _OPENAI_TO_NATIVE): v for k, v in ckpt["model_state_dict"].items()}
    model = _assemble(dims, state, device, dtype, source)
    return model, CheckpointInfo(source=source, format="openai", directory=path.parent)


def _assemble(
    dims: ModelDims, state: dict[str, Tensor], device: Any, dtype: torch.dtype, source: str
) -> Whisper:
    with torch.device("meta"):
        model = Whisper(dims)
    if "encoder.positional_embedding" not in state:
        state["encoder.positional_embedding"] = sinusoids(dims.n_audio_ctx, dims.n_audio_state)
    expected = model.state_dict()
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    if missing or unexpected:
        raise ModelLoadError(
            f"{source}: weights do not match a Whisper model: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    for name, tensor in state.items():
        if not isinstance(tensor, Tensor) or not tensor.is_floating_point():
            raise ModelLoadError(f"{source}: {name} is not a floating-point tensor")
        want = expected[name].shape
        if tuple(tensor.shape) != tuple(want):
            raise ModelLoadError(
                f"{source}: {name} has shape {tuple(tensor.shape)}, config says {tuple(want)}"
            )
    model.load_state_dict(state, assign=True)
    model.alignment_heads = default_alignment_heads(dims)
    return model.to(device=device, dtype=dtype).eval()


def init_random(dims: ModelDims, *, seed: int = 0, std: float = 0.02) -> Whisper:
    """A randomly initialised model (for tests, benchmarks and the untrained default): normal weights and
    biases, unit layer norms, sinusoidal encoder positions; the same seed gives the same model."""
    g = torch.Generator().manual_seed(seed)
    model = Whisper(dims)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.fill_(1.0)
                module.bias.zero_()
            else:
                for p in module.parameters(recurse=False):
                    p.normal_(0.0, std, generator=g)
    return model.eval()


# ---------------------------------------------------------------------------------------------- saving


def hf_config(dims: ModelDims, *, eot: int, sot: int) -> dict[str, Any]:
    return {
        "architectures": ["WhisperForConditionalGeneration"],
        "model_type": "whisper",
        "vocab_size": dims.n_vocab,
        "num_mel_bins": dims.n_mels,
        "max_source_positions": dims.n_audio_ctx,
        "max_target_positions": dims.n_text_ctx,
        "d_model": dims.n_text_state,
        "encoder_layers": dims.n_audio_layer,
        "encoder_attention_heads": dims.n_audio_head,
        "encoder_ffn_dim": 4 * dims.n_audio_state,
        "decoder_layers": dims.n_text_layer,
        "decoder_attention_heads": dims.n_text_head,
        "decoder_ffn_dim": 4 * dims.n_text_state,
        "activation_function": "gelu",
        "scale_embedding": False,
        "tie_word_embeddings": True,
        "bos_token_id": eot,
        "eos_token_id": eot,
        "pad_token_id": eot,
        "decoder_start_token_id": sot,
        "torch_dtype": "float32",
    }


def save_hf(
    model: Whisper, directory: str | Path, *, config: dict[str, Any], generation: dict[str, Any]
) -> Path:
    """Write ``model`` as a Hugging Face directory (config.json, generation_config.json, model.safetensors)."""
    if model.dims.n_audio_state != model.dims.n_text_state:
        raise ValueError("the Hugging Face layout needs equal encoder and decoder widths")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    state = {
        _rename(k, _NATIVE_TO_HF): v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()
    }
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n", encoding="utf-8")
    return out


def save_openai(model: Whisper, path: str | Path) -> Path:
    """Write ``model`` as an openai-whisper checkpoint (``dims`` + ``model_state_dict``)."""
    state = {_rename(k, _NATIVE_TO_OPENAI): v.detach().to("cpu") for k, v in model.state_dict().items()}
    torch.save({"dims": model.dims.to_openai(), "model_state_dict": state}, path)
    return Path(path)
