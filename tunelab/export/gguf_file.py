"""One GGUF file from a model, written with the `gguf` package as llama.cpp's own converter
(convert_hf_to_gguf.py) writes Llama, Qwen2 and Gemma 3 models, so llama.cpp, Ollama and transformers' GGUF
reader load it as they load theirs.

What follows llama.cpp's conventions, beyond renaming tensors (gguf.TensorNameMap):
- Llama's q and k projections are permuted from Hugging Face's rotate-half layout back to the interleaved
  pairs llama.cpp's rope expects;
- Gemma's RMSNorm multiplies by (1 + weight): its norm weights are stored with the 1 added;
- tied embeddings are stored once (no output.weight); llama.cpp reuses token_embd;
- 1-D tensors (norms, biases) stay f32; matrices are f16, q8_0 or q4_0, quantized by gguf.quants in blocks of
  32 along each row, so a row length that is not a multiple of 32 cannot be quantized.

The tensors are converted and written one at a time: the file never exists twice in memory.
"""

from __future__ import annotations

import errno
import re
import shutil
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from ..errors import InvalidRequest
from .gguf_vocab import read_vocab, write_vocab
from .source import Source, end_of_turn_ids

# Gemma 3 in GGUF has no per-layer attention types: llama.cpp (and transformers' reader) make every sixth layer
# global and the others sliding-window, and use this rope base on the sliding layers.
GEMMA3_GLOBAL_EVERY = 6
GEMMA3_LOCAL_ROPE_BASE = 10_000.0


def write_gguf(source: Source, work: Path, quant: str, progress: Callable[[float, str], None]) -> Path:
    import gguf

    qtype = {"f16": gguf.GGMLQuantizationType.F16, "q8_0": gguf.GGMLQuantizationType.Q8_0,
             "q4_0": gguf.GGMLQuantizationType.Q4_0}[quant]
    config = source.config
    arch = _architecture(config)
    progress(0.05, "loading the model")
    model = source.load_model()
    state = model.state_dict()
    names = gguf.TensorNameMap(arch, config["num_hidden_layers"])
    tied = config.get("tie_word_embeddings", False) or _same_storage(state, "lm_head.weight", "model.embed_tokens.weight")
    plan = []  # (hf name, gguf name, shape, ggml type)
    for hf_name, tensor in state.items():
        if hf_name == "lm_head.weight" and tied:
            continue
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise InvalidRequest(f"the tensor {hf_name} has no GGUF name for the {config['model_type']} "
                                 "architecture", param="model")
        plan.append((hf_name, gguf_name, tuple(tensor.shape), _ggml_type(hf_name, tuple(tensor.shape), qtype, quant)))

    target = work / f"{_file_stem(source.model_id)}-{quant}.gguf"
    writer = gguf.GGUFWriter(target, gguf.MODEL_ARCH_NAMES[arch])
    _write_metadata(writer, source, config, arch, quant)
    tokenizer = source.tokenizer
    ends = end_of_turn_ids(tokenizer)
    vocab = read_vocab(tokenizer, source.tokenizer_dir, state["model.embed_tokens.weight"].shape[0],
                       ends[0] if ends else None)
    write_vocab(writer, vocab, source.chat_template)
    for hf_name, gguf_name, shape, ggml_type in plan:
        writer.add_tensor_info(gguf_name, _byte_shape(shape, ggml_type), _numpy_dtype(ggml_type),
                               _nbytes(shape, ggml_type), raw_dtype=ggml_type)
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for i, (data, (_, gguf_name, _, ggml_type)) in enumerate(zip(_tensors(state, plan, config, arch), plan)):
            progress(0.1 + 0.9 * i / len(plan), f"writing {gguf_name} ({ggml_type.name})")
            try:
                writer.write_tensor_data(data)
            except OSError as exc:
                raise _short_write(exc, target, data.nbytes) from exc
    finally:
        writer.close()  # also on error: an open file would keep its disk space (and its mount) busy
    return target


def _short_write(exc: OSError, target: Path, nbytes: int) -> OSError:
    """numpy's `tofile` reports a write the disk had no room for as "N requested and M written", without an
    errno: name it ENOSPC, as every other write does, when the disk indeed has less room than the tensor."""
    if exc.errno is None and shutil.disk_usage(target.parent).free < nbytes:
        return OSError(errno.ENOSPC, f"no space left on the device of {target.parent}")
    return exc


def _architecture(config: dict):
    import gguf

    arches = {"llama": gguf.MODEL_ARCH.LLAMA, "qwen2": gguf.MODEL_ARCH.QWEN2, "gemma3_text": gguf.MODEL_ARCH.GEMMA3,
              "gemma3": gguf.MODEL_ARCH.GEMMA3}
    model_type = config.get("model_type")
    if model_type not in arches:
        raise InvalidRequest(f"GGUF export handles the llama, qwen2 and gemma3 architectures, not {model_type!r}",
                             param="model")
    return arches[model_type]


def _rope(config: dict, layer_type: str | None = None) -> dict:
    """The rope parameters, in transformers 5's `rope_parameters` (per layer type for Gemma 3) or the older keys."""
    rope = config.get("rope_parameters") or {"rope_theta": config.get("rope_theta", 10_000.0),
                                             **(config.get("rope_scaling") or {})}
    if layer_type and layer_type in rope:
        rope = rope[layer_type]
    return rope


def _write_metadata(writer, source: Source, config: dict, arch, quant: str) -> None:
    import gguf

    file_types = {"f16": gguf.LlamaFileType.MOSTLY_F16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
                  "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0}
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    gemma = arch == gguf.MODEL_ARCH.GEMMA3
    writer.add_name(source.model_id)
    writer.add_file_type(file_types[quant])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(config.get("num_key_value_heads", heads))
    writer.add_layer_norm_rms_eps(config.get("rms_norm_eps", 1e-6))
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    rope = _rope(config, "full_attention" if gemma else None)
    writer.add_rope_freq_base(rope.get("rope_theta", 10_000.0))
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(rope["factor"])
    elif rope_type != "default":
        raise InvalidRequest(f"the model's {rope_type!r} rope scaling is not exported to GGUF yet", param="model")
    if arch == gguf.MODEL_ARCH.LLAMA:
        writer.add_vocab_size(config["vocab_size"])
        writer.add_rope_dimension_count(head_dim)
    if gemma:
        _check_gemma3_layout(config)
        writer.add_sliding_window(config["sliding_window"])
        if config.get("final_logit_softcapping"):
            writer.add_final_logit_softcapping(config["final_logit_softcapping"])
    elif config.get("use_sliding_window"):
        raise InvalidRequest("the model uses sliding-window attention, which GGUF states for Gemma 3 only",
                             param="model")


def _check_gemma3_layout(config: dict) -> None:
    """GGUF cannot state another layout of sliding and global layers than Gemma 3's own."""
    n = config["num_hidden_layers"]
    expected = ["full_attention" if (i + 1) % GEMMA3_GLOBAL_EVERY == 0 else "sliding_attention" for i in range(n)]
    if config.get("layer_types", expected) != expected:
        raise InvalidRequest(f"the model's layer types ({', '.join(config['layer_types'])}) are not Gemma 3's "
                             f"(every {GEMMA3_GLOBAL_EVERY}th layer global), the only layout a GGUF file states",
                             param="model")
    local = _rope(config, "sliding_attention")
    if local is not _rope(config) and local.get("rope_theta", GEMMA3_LOCAL_ROPE_BASE) != GEMMA3_LOCAL_ROPE_BASE:
        raise InvalidRequest(f"the sliding layers' rope base {local['rope_theta']} is not Gemma 3's "
                             f"{GEMMA3_LOCAL_ROPE_BASE:g}, the one llama.cpp uses", param="model")


def _ggml_type(name: str, shape: tuple[int, ...], qtype, quant: str):
    import gguf

    if len(shape) < 2:
        return gguf.GGMLQuantizationType.F32
    if quant != "f16":
        block = gguf.GGML_QUANT_SIZES[qtype][0]
        if shape[-1] % block:
            raise InvalidRequest(f"{quant} quantizes rows in blocks of {block} values, but {name} has shape "
                                 f"{list(shape)}: its rows of {shape[-1]} are not a multiple of {block}; export it "
                                 "as f16", param="quant")
    return qtype


def _byte_shape(shape: tuple[int, ...], ggml_type) -> tuple[int, ...]:
    import gguf

    if ggml_type in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
        return shape
    return gguf.quants.quant_shape_to_byte_shape(shape, ggml_type)


def _numpy_dtype(ggml_type):
    import gguf

    return {gguf.GGMLQuantizationType.F32: np.float32, gguf.GGMLQuantizationType.F16: np.float16}.get(ggml_type,
                                                                                                      np.uint8)


def _nbytes(shape: tuple[int, ...], ggml_type) -> int:
    return int(np.prod(_byte_shape(shape, ggml_type))) * np.dtype(_numpy_dtype(ggml_type)).itemsize


def _tensors(state: dict, plan: list, config: dict, arch) -> Iterator[np.ndarray]:
    """Each planned tensor in GGUF's layout and type, one at a time."""
    import gguf
    import torch

    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads", heads)
    for hf_name, _, _, ggml_type in plan:
        tensor = state[hf_name].detach().to(torch.float32)
        if arch == gguf.MODEL_ARCH.LLAMA and hf_name.endswith(("q_proj.weight", "q_proj.bias")):
            tensor = _interleave_rope(tensor, heads)
        elif arch == gguf.MODEL_ARCH.LLAMA and hf_name.endswith(("k_proj.weight", "k_proj.bias")):
            tensor = _interleave_rope(tensor, kv_heads)
        elif arch == gguf.MODEL_ARCH.GEMMA3 and hf_name.endswith("norm.weight"):
            tensor = tensor + 1
        data = tensor.numpy()
        if ggml_type == gguf.GGMLQuantizationType.F32:
            yield np.ascontiguousarray(data, dtype=np.float32)
        elif ggml_type == gguf.GGMLQuantizationType.F16:
            yield np.ascontiguousarray(data, dtype=np.float16)
        else:
            yield gguf.quants.quantize(np.ascontiguousarray(data), ggml_type)


def _interleave_rope(weights, heads: int):
    """Hugging Face's rotate-half rows per head → the interleaved pairs of llama.cpp's rope (as its converter)."""
    return (weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def _same_storage(state: dict, a: str, b: str) -> bool:
    return a in state and b in state and state[a].data_ptr() == state[b].data_ptr()


def _file_stem(model_id: str) -> str:
    """A file name from a model id: `ft:SmolLM2-135M-Instruct:local:ft-travel:1a2b3c4d` → `SmolLM2-135M-
    Instruct-ft-travel-1a2b3c4d`."""
    parts = [p for p in model_id.split(":") if p and p not in ("ft", "local")]
    return re.sub(r"[^A-Za-z0-9._-]+", "-", "-".join(parts)).strip("-.") or "model"
