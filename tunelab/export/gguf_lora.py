"""A fine-tune's LoRA adapter as llama.cpp's LoRA GGUF, so one base GGUF serves every fine-tune of it:

    llama-server -m base-f16.gguf --lora ft-travel-lora-f16.gguf --lora-init-without-apply

and a request picks its adapter (`"lora": [{"id": 0, "scale": 1.0}]`). The file is what llama.cpp's own
convert_lora_to_gguf.py writes: general.type "adapter", adapter.type "lora", adapter.lora.alpha, and per target
`<base tensor name>.lora_a` (rank × in) and `.lora_b` (out × rank), named and laid out as gguf_file.py writes the
base: the tensor names of gguf.TensorNameMap, and Llama's q/k rope permutation applied to lora_b's rows (the rows
of B·A are B's rows; A's columns are the layer's inputs, which the permutation does not touch).

llama.cpp scales every pair by alpha / rank. PEFT's own scale can differ per module (rsLoRA's alpha / sqrt(rank),
rank_pattern, alpha_pattern): that module's B is multiplied by the ratio, so llama.cpp applies what PEFT applies.
A target llama.cpp cannot take (the embeddings, a head tied to them, DoRA, LoRA biases, fully trained modules) is
refused by name before anything is written.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import InvalidRequest
from ..store.blobs import fsync_path
from .gguf_file import _architecture, _interleave_rope

Progress = Callable[[float, str], None]
DTYPES = ("f16", "f32")
ADAPTER_PREFIX = "base_model.model."


def write_lora_gguf(adapter_dir: Path, base_dir: Path, out: Path, progress: Progress | None = None, *,
                    dtype: str = "f16", name: str | None = None) -> Path:
    """Write the PEFT LoRA adapter in `adapter_dir` (trained on the model in `base_dir`) as the GGUF file `out`,
    which must not exist yet: it is written beside and renamed into place. Matrices are `dtype` (f16 or f32);
    `name` (general.name) defaults to the adapter's directory name.
    Raises InvalidRequest (param "model") for what is not a LoRA adapter of this base or what llama.cpp cannot
    take, ("out") for an existing `out`."""
    import gguf

    adapter_dir, base_dir, out = Path(adapter_dir), Path(base_dir), Path(out)
    report = progress or (lambda fraction, what: None)
    if dtype not in DTYPES:
        raise InvalidRequest(f"a LoRA GGUF holds f16 or f32 matrices, not {dtype!r}", param="quant")
    if out.exists():
        raise InvalidRequest(f"{out} already exists; choose a new file", param="out")
    lora = _read_config(adapter_dir)
    config = json.loads((base_dir / "config.json").read_text())
    arch = _architecture(config)
    report(0.05, "reading the adapter")
    pairs = _pairs(adapter_dir, lora, base_dir, config)
    names = gguf.TensorNameMap(arch, config["num_hidden_layers"])
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads", heads)
    alpha = float(lora["lora_alpha"])
    tensors = []
    for module, (a, b) in pairs.items():
        gguf_name = names.get_name(f"{module}.weight", try_suffixes=(".weight",))
        if gguf_name is None:
            raise InvalidRequest(f"the adapter's target {module} has no GGUF name for the {config['model_type']} "
                                 "architecture: llama.cpp cannot apply it", param="model")
        b = b * _scale_ratio(lora, module, a.shape[0], alpha)
        if arch == gguf.MODEL_ARCH.LLAMA and module.endswith("q_proj"):
            b = _interleave_rope(b, heads)
        elif arch == gguf.MODEL_ARCH.LLAMA and module.endswith("k_proj"):
            b = _interleave_rope(b, kv_heads)
        tensors += [(f"{gguf_name}.lora_a", a), (f"{gguf_name}.lora_b", b)]

    out.parent.mkdir(parents=True, exist_ok=True)
    fd, staging = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".part", dir=out.parent)
    os.close(fd)
    try:
        writer = gguf.GGUFWriter(staging, gguf.MODEL_ARCH_NAMES[arch])
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
        writer.add_name(name or adapter_dir.name)
        writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if dtype == "f16" else gguf.LlamaFileType.ALL_F32)
        numpy_dtype = np.float16 if dtype == "f16" else np.float32
        for name, tensor in tensors:
            writer.add_tensor(name, np.ascontiguousarray(tensor.numpy(), dtype=numpy_dtype))
        report(0.5, f"writing {len(tensors)} LoRA tensors ({dtype})")
        try:
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
        finally:
            writer.close()
        fsync_path(Path(staging))
        if out.exists():  # created by someone else while we wrote: never replace it
            raise InvalidRequest(f"{out} appeared while the adapter was written; nothing was replaced", param="out")
        os.rename(staging, out)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise
    report(1.0, "done")
    return out


def _read_config(adapter_dir: Path) -> dict:
    """The adapter's PEFT config, refusing what is not a plain LoRA adapter."""
    path = adapter_dir / "adapter_config.json"
    if not path.is_file():
        what = "a whole model (a full fine-tune or a base model)" if (adapter_dir / "config.json").is_file() \
            else "not a PEFT adapter"
        raise InvalidRequest(f"{adapter_dir} is {what}: it has no LoRA adapter (adapter_config.json) to write as "
                             "a LoRA GGUF; export it as gguf instead", param="model")
    lora = json.loads(path.read_text())
    if lora.get("peft_type") != "LORA":
        raise InvalidRequest(f"{adapter_dir} holds a {lora.get('peft_type')} adapter; llama.cpp applies LoRA "
                             "adapters only", param="model")
    if lora.get("use_dora"):
        raise InvalidRequest(f"{adapter_dir} is a DoRA adapter; llama.cpp applies plain LoRA only (export it "
                             "merged, as gguf)", param="model")
    if not (adapter_dir / "adapter_model.safetensors").is_file():
        raise InvalidRequest(f"{adapter_dir} has no adapter_model.safetensors", param="model")
    return lora


def _pairs(adapter_dir: Path, lora: dict, base_dir: Path, config: dict) -> dict:
    """module name → (A as rank × in, B as out × rank), fp32, in the base's layer order; every target checked
    against the base's own weight shapes (read from the safetensors headers)."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file

    state = load_file(adapter_dir / "adapter_model.safetensors", device="cpu")
    base_shapes = {}
    for file in sorted(base_dir.glob("*.safetensors")):
        with safe_open(file, framework="pt") as f:
            base_shapes.update({k: tuple(f.get_slice(k).get_shape()) for k in f.keys()})
    found: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        name = key.removeprefix(ADAPTER_PREFIX)
        if name.endswith(".base_layer.weight"):  # a copy of the base's own weight (PEFT saves it for tied heads)
            continue
        for part in ("A", "B"):
            if name.endswith(f".lora_{part}.weight"):
                found.setdefault(name.removesuffix(f".lora_{part}.weight"), {})[part] = tensor.to(torch.float32)
                break
        else:
            raise InvalidRequest(f"the adapter trains {_module_of(name)} in a way llama.cpp cannot apply ({key}: "
                                 "only LoRA pairs on linear layers are; export the model merged, as gguf)",
                                 param="model")
    pairs = {}
    tied = config.get("tie_word_embeddings", False)
    for module in sorted(found, key=_layer_order):
        if module.endswith("embed_tokens") or (module.endswith("lm_head") and tied):
            raise InvalidRequest(f"the adapter targets {module}, which llama.cpp cannot apply a LoRA to here "
                                 f"({'the head is tied to the token embeddings' if tied else 'token embeddings'}); "
                                 "train with target_modules='all-linear' or export the model merged, as gguf",
                                 param="model")
        a, b = found[module].get("A"), found[module].get("B")
        if a is None or b is None:
            raise InvalidRequest(f"the adapter's {module} lacks its lora_{'A' if a is None else 'B'} matrix",
                                 param="model")
        base = base_shapes.get(f"{module}.weight")
        if base is None or a.dim() != 2 or (b.shape[0], a.shape[1]) != base or b.shape[1] != a.shape[0]:
            raise InvalidRequest(f"the adapter's {module} (A {list(a.shape)}, B {list(b.shape)}) does not fit the "
                                 f"base model in {base_dir} ({list(base) if base else 'no such weight'}): an "
                                 "adapter of another model", param="model")
        pairs[module] = (a, b)
    if not pairs:
        raise InvalidRequest(f"{adapter_dir} holds no LoRA matrices", param="model")
    return pairs


def _scale_ratio(lora: dict, module: str, rank: int, alpha: float) -> float:
    """PEFT's scale of `module` over the one llama.cpp applies to every pair (alpha / rank; 1 when alpha is 0)."""
    from peft.utils.other import get_pattern_key

    alphas = lora.get("alpha_pattern") or {}
    module_alpha = float(alphas.get(get_pattern_key(alphas.keys(), module), lora["lora_alpha"]))
    peft = module_alpha / (math.sqrt(rank) if lora.get("use_rslora") else rank)
    llama_cpp = alpha / rank if alpha else 1.0
    return peft / llama_cpp


def _module_of(name: str) -> str:
    return name.split(".lora_")[0].removesuffix(".weight").removesuffix(".bias")


def _layer_order(module: str) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in module.split("."))
