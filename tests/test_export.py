"""Export round trips on tiny random models of each architecture (tests/tiny_models.py), each with a real LoRA
adapter registered the way a finished job registers its model: the merged model equals base + adapter, the PEFT
export loads back into the same model, the GGUF file read back by transformers' own GGUF reader gives the same
logits (f16) or the same greedy answer (q8_0), the Modelfile's template renders the training template's prompt,
and bad input fails with a clear error and leaves nothing behind."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

import tiny_models
from tunelab.errors import InvalidRequest, ModelNotFound
from tunelab.export import FORMATS, QUANTS, ExportRequest, ExportedFile, export_model

CHAT = [{"role": "system", "content": "You are a travel assistant."},
        {"role": "user", "content": "Where should I go in May? I like quiet beaches and good food."}]


@pytest.fixture(scope="session")
def built(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """Per architecture: a tiny random model and a LoRA adapter on it with random, non-zero B matrices, saved as
    tunelab's trainer saves a fine-tune (PEFT's adapter files plus the tokenizer with its chat template).
    Gemma 3 has six layers, so its sliding-window layout (five local layers, then a global one) is the one a GGUF
    file states."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = tmp_path_factory.mktemp("export-models")
    found = {}
    for arch in tiny_models.ARCHITECTURES:
        base = tiny_models.build(arch, root / arch, layers=6 if arch == "gemma3" else 2)
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        torch.manual_seed(1)
        peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                                task_type="CAUSAL_LM"))
        with torch.no_grad():
            for name, param in peft.named_parameters():
                if "lora_B" in name:
                    param.normal_(0, 0.05)
        adapter = root / f"{arch}-run" / "adapter"
        peft.save_pretrained(adapter, safe_serialization=True)
        AutoTokenizer.from_pretrained(base).save_pretrained(adapter)
        found[arch] = (base, adapter)
    return found


class Lab:
    """A state database with the tiny base models imported into the catalog and their fine-tunes registered."""

    def __init__(self, home: Path, built: dict, archs: tuple[str, ...], training_rows: list[dict] | None = None):
        from tunelab.config import get_settings
        from tunelab.jobs.queue import Queue
        from tunelab.models.catalog import import_model
        from tunelab.models.registry import Registry
        from tunelab.store.db import Database
        from tunelab.store.files import Files

        settings = get_settings()
        self.db = Database(settings.state_dir / "tunelab.db")
        self.db.migrate()
        self.registry = Registry(self.db, "local")
        files = Files(self.db, settings.state_dir / "files", settings.max_file_bytes)
        data = home / "train.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in (training_rows or [])))
        training_file = files.add_path(data, "train.jsonl", "fine-tune")
        self.models, self.jobs = {}, []
        for arch in archs:
            base, adapter = built[arch]
            name = f"tiny-{arch}"
            import_model(base, name)
            job_id = f"ftjob-{arch}"
            self.jobs.append(job_id)
            model_id = f"ft:{name}:local:export:{arch}"
            Queue(self.db).add(job_id, {"model": name, "base": name, "training_file": training_file,
                                        "validation_file": None}, status="succeeded")
            with self.db.write() as conn:
                self.registry.add_fine_tuned(conn, model_id, job_id=job_id, base=name, parent=name, method="lora",
                                             path=adapter, owned_by="local")
            self.models[arch] = model_id

    def add(self, model_id: str, base: str, weights: Path, method: str = "lora") -> None:
        """Register another fine-tune of `base` (of the first job), as a job registers its model."""
        with self.db.write() as conn:
            self.registry.add_fine_tuned(conn, model_id, job_id=next(iter(self.jobs)), base=base, parent=base,
                                         method=method, path=weights, owned_by="local")


def base_plus_adapter(base: Path, adapter: Path):
    """What tunelab serves for a LoRA fine-tune: the fp32 base with the adapter attached, unmerged."""
    from peft import PeftModel

    from tunelab.models.load import load_causal_lm

    return PeftModel.from_pretrained(load_causal_lm(base), adapter).eval()


def prompt_ids(tokenizer) -> torch.Tensor:
    return tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, return_tensors="pt",
                                         return_dict=True)["input_ids"]


@torch.no_grad()
def logits(model, ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=ids).logits[0]


@pytest.mark.parametrize("arch", tiny_models.ARCHITECTURES)
def test_merged_equals_base_plus_adapter(arch, built, home, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    lab = Lab(home, built, (arch,))
    steps = []
    files = export_model(lab.registry, lab.models[arch], ExportRequest("merged"), tmp_path / "merged",
                         progress=lambda f, what: steps.append(f))
    names = {f.name for f in files}
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json"} <= names
    assert steps[0] == 0.0 and steps[-1] == 1.0 and steps == sorted(steps)
    assert all(f.bytes == (tmp_path / "merged" / f.name).stat().st_size for f in files)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32)
    assert not any("lora" in k for k in merged.state_dict())
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "merged")
    trained = AutoTokenizer.from_pretrained(built[arch][1])
    assert tokenizer.chat_template == trained.chat_template
    ids = prompt_ids(tokenizer)
    served = base_plus_adapter(*built[arch])
    expected, got = logits(served, ids), logits(merged, ids)
    assert (expected - logits(served.get_base_model().__class__.from_pretrained(built[arch][0]), ids)).abs().max() > 1e-2
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    # generate() stops at the end of the assistant's turn, as serving does
    marker = "<end_of_turn>" if arch == "gemma3" else "<|im_end|>"
    eos = GenerationConfig.from_pretrained(tmp_path / "merged").eos_token_id
    eos = eos if isinstance(eos, list) else [eos]
    assert tokenizer.convert_tokens_to_ids(marker) in eos
    assert not list(tmp_path.glob(".merged*"))


@pytest.mark.parametrize("arch", tiny_models.ARCHITECTURES)
def test_peft_export_loads_back_as_the_served_model(arch, built, home, tmp_path):
    from peft import PeftModel
    from transformers import AutoTokenizer

    from tunelab.models.load import load_causal_lm

    lab = Lab(home, built, (arch,))
    files = export_model(lab.registry, lab.models[arch], ExportRequest("peft"), tmp_path / "peft")
    names = {f.name for f in files}
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= names
    loaded = PeftModel.from_pretrained(load_causal_lm(built[arch][0]), tmp_path / "peft").eval()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "peft")
    assert tokenizer.chat_template == AutoTokenizer.from_pretrained(built[arch][1]).chat_template
    ids = prompt_ids(tokenizer)
    torch.testing.assert_close(logits(loaded, ids), logits(base_plus_adapter(*built[arch]), ids), atol=0, rtol=0)


# --- GGUF ------------------------------------------------------------------------------------------------------

END_OF_TURN = {"llama": "<|im_end|>", "qwen2": "<|im_end|>", "gemma3": "<end_of_turn>"}


def read_gguf(directory: Path, name: str, arch: str):
    """The GGUF file read back by transformers' own GGUF reader (the `gguf` package underneath), dequantized to
    fp32: an independent reader of what llama.cpp loads. Gemma 3's attention scale is not in GGUF: llama.cpp
    takes it from the head size (key_length), transformers' reader assumes 256, Gemma 3's own head size; the
    tiny model's heads are 16 wide, so it is given here."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    extra = {"query_pre_attn_scalar": 16} if arch == "gemma3" else {}
    model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32, **extra).eval()
    return model, AutoTokenizer.from_pretrained(directory, gguf_file=name)


def rounded(model, quant: str):
    """`model` with every matrix rounded as the GGUF stores it (f16, or quantized and dequantized by gguf.quants):
    what the file should compute, exactly."""
    import gguf

    qtype = {"f16": None, "q8_0": gguf.GGMLQuantizationType.Q8_0, "q4_0": gguf.GGMLQuantizationType.Q4_0}[quant]
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() >= 2:
                data = param.detach().numpy()
                back = data.astype("float16").astype("float32") if qtype is None else \
                    gguf.quants.dequantize(gguf.quants.quantize(data, qtype), qtype)
                param.copy_(torch.from_numpy(back))
    return model


@torch.no_grad()
def greedy(model, ids: torch.Tensor, n: int = 16) -> list[int]:
    return model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)[0, ids.shape[1]:].tolist()


@pytest.mark.parametrize("arch", tiny_models.ARCHITECTURES)
def test_gguf_f16_reads_back_with_the_same_logits_tokenizer_and_template(arch, built, home, tmp_path):
    import gguf
    from transformers import AutoTokenizer

    lab = Lab(home, built, (arch,))
    steps = []
    files = export_model(lab.registry, lab.models[arch], ExportRequest("gguf"), tmp_path / "gguf",
                         progress=lambda f, what: steps.append(what))
    assert len(files) == 1 and files[0].name.endswith("-f16.gguf")
    assert sum("writing" in s for s in steps) >= 10  # progress per tensor
    trained = AutoTokenizer.from_pretrained(built[arch][1])
    model, tokenizer = read_gguf(tmp_path / "gguf", files[0].name, arch)
    assert tokenizer.chat_template == trained.chat_template
    ids = prompt_ids(trained)
    assert prompt_ids(tokenizer).tolist() == ids.tolist()
    served = base_plus_adapter(*built[arch])
    got = logits(model, ids)
    # the file holds the served model's weights rounded to f16, nothing else: the same logits as those rounded
    torch.testing.assert_close(got, logits(rounded(served.merge_and_unload(), "f16"), ids), atol=2e-4, rtol=0)
    # and within f16's rounding of the served fp32 model itself (weights ~0.2: f16 keeps ~3 decimal digits)
    assert (got - logits(base_plus_adapter(*built[arch]), ids)).abs().max() < 0.05
    # llama.cpp stops on the end-of-turn token: it is the file's eot (and eos where the tokenizer's eos is it)
    fields = gguf.GGUFReader(tmp_path / "gguf" / files[0].name).fields
    eot = int(fields["tokenizer.ggml.eot_token_id"].parts[-1][0])
    assert eot == trained.convert_tokens_to_ids(END_OF_TURN[arch])
    assert fields["general.architecture"].contents() == {"gemma3": "gemma3", "qwen2": "qwen2"}.get(arch, "llama")
    assert "output.weight" not in {t.name for t in gguf.GGUFReader(tmp_path / "gguf" / files[0].name).tensors}


@pytest.mark.parametrize("arch", tiny_models.ARCHITECTURES)
def test_gguf_q8_0_gives_the_same_greedy_answer(arch, built, home, tmp_path):
    lab = Lab(home, built, (arch,))
    files = export_model(lab.registry, lab.models[arch], ExportRequest("gguf", quant="q8_0"), tmp_path / "q8")
    model, tokenizer = read_gguf(tmp_path / "q8", files[0].name, arch)
    ids = prompt_ids(tokenizer)
    reference = rounded(base_plus_adapter(*built[arch]).merge_and_unload(), "q8_0")
    torch.testing.assert_close(logits(model, ids), logits(reference, ids), atol=2e-4, rtol=0)
    # A random tiny model has near-ties that q8_0's rounding flips, so its answer is compared with the served
    # model quantized the same way; tests/test_export_llamacpp_slow.py compares the real fine-tune's.
    assert greedy(model, ids) == greedy(reference, ids)


def test_gguf_q4_0_loads_and_a_model_whose_rows_cannot_take_it_is_refused(built, home, tmp_path):
    from tunelab.models.catalog import import_model

    lab = Lab(home, built, ("llama",))
    files = export_model(lab.registry, lab.models["llama"], ExportRequest("gguf", quant="q4_0"), tmp_path / "q4")
    model, tokenizer = read_gguf(tmp_path / "q4", files[0].name, "llama")
    reference = rounded(base_plus_adapter(*built["llama"]).merge_and_unload(), "q4_0")
    ids = prompt_ids(tokenizer)
    torch.testing.assert_close(logits(model, ids), logits(reference, ids), atol=2e-4, rtol=0)
    import gguf

    matrices = [t for t in gguf.GGUFReader(tmp_path / "q4" / files[0].name).tensors if len(t.shape) == 2]
    assert {t.tensor_type for t in matrices} == {gguf.GGMLQuantizationType.Q4_0}
    # a base model 48 wide: rows of 48 values are not whole blocks of 32
    import_model(tiny_models.build("llama", tmp_path / "narrow", hidden=48), "narrow")
    with pytest.raises(InvalidRequest) as refused:
        export_model(lab.registry, "narrow", ExportRequest("gguf", quant="q4_0"), tmp_path / "narrow-q4")
    assert refused.value.param == "quant"
    assert "[" in refused.value.message and "48" in refused.value.message and "multiple of 32" in refused.value.message
    assert not (tmp_path / "narrow-q4").exists() and not list(tmp_path.glob(".narrow-q4*"))
    # f16 takes any shape
    assert export_model(lab.registry, "narrow", ExportRequest("gguf"), tmp_path / "narrow-f16")


# --- Ollama ----------------------------------------------------------------------------------------------------

class GoTemplate:
    """Just enough of Go's text/template to render an Ollama TEMPLATE: text, {{- -}} trimming, fields of the dot
    and of variables, `:=` and `=`, range (with index and element variables), if / else if / else, and the
    functions eq, ne, and, or, not, printf (%s), as Go defines them. Ollama renders with the real thing; this
    shows the template means the same text as the training template."""

    ACTION = re.compile(r"{{(-\s)?(.*?)(\s-)?}}", re.S)
    WORD = re.compile(r'\(|\)|"(?:[^"\\]|\\.)*"|[^\s()]+')

    def __init__(self, source: str):
        parts, pos = [], 0
        for m in self.ACTION.finditer(source):
            parts.append(["text", source[pos:m.start()]])
            if m.group(1):
                parts[-1][1] = parts[-1][1].rstrip()
            parts.append(["action", m.group(2).strip(), bool(m.group(3))])
            pos = m.end()
        parts.append(["text", source[pos:]])
        for i, part in enumerate(parts):
            if part[0] == "action" and part[2]:
                parts[i + 1][1] = parts[i + 1][1].lstrip()
        self.tree, rest = self._block(parts, 0)
        assert rest == len(parts)

    def _block(self, parts, i, stop=("end", "else")):
        nodes = []
        while i < len(parts):
            part = parts[i]
            if part[0] == "text":
                nodes.append(("text", part[1]))
                i += 1
                continue
            action = part[1]
            head = action.split()[0]
            if head in stop:
                return nodes, i
            if head in ("range", "if"):
                body, i = self._block(parts, i + 1)
                branches = [(action[len(head):].strip(), body)]
                while parts[i][1].startswith("else"):
                    cond = parts[i][1][4:].strip()
                    body, i = self._block(parts, i + 1)
                    branches.append((cond[2:].strip() if cond.startswith("if") else "true", body))
                assert parts[i][1] == "end", parts[i]
                nodes.append((head, branches))
                i += 1
            else:
                nodes.append(("expr", action))
                i += 1
        return nodes, i

    def render(self, **data) -> str:
        self.vars: dict = {}
        return self._run(self.tree, data)

    def _run(self, nodes, dot) -> str:
        out = []
        for kind, value in nodes:
            if kind == "text":
                out.append(value)
            elif kind == "expr":
                m = re.match(r"(\$\w+)\s*(:?=)\s*(.*)", value, re.S)
                if m:
                    self.vars[m.group(1)] = self._eval(m.group(3), dot)
                else:
                    out.append(str(self._eval(value, dot)))
            elif kind == "if":
                for cond, body in value:
                    if self._eval(cond, dot):
                        out.append(self._run(body, dot))
                        break
            else:
                (spec, body), *_ = value
                m = re.match(r"(?:(\$\w+),\s*(\$\w+)\s*:=\s*)?(.*)", spec)
                for index, item in enumerate(self._eval(m.group(3), dot)):
                    if m.group(1):
                        self.vars[m.group(1)], self.vars[m.group(2)] = index, item
                    out.append(self._run(body, item))
        return "".join(out)

    def _eval(self, expr: str, dot):
        words = self.WORD.findall(expr)
        value, rest = self._call(words, dot)
        assert not rest, expr
        return value

    def _call(self, words, dot):
        functions = {"eq": lambda a, b: a == b, "ne": lambda a, b: a != b, "not": lambda a: not a,
                     "and": lambda *a: all(a), "or": lambda *a: any(a),
                     "printf": lambda fmt, *a: fmt.replace("%s", "{}").format(*a)}
        if words[0] in functions:
            args, rest = [], words[1:]
            while rest and rest[0] != ")":
                arg, rest = self._operand(rest, dot)
                args.append(arg)
            return functions[words[0]](*args), rest
        return self._operand(words, dot)

    def _operand(self, words, dot):
        word, rest = words[0], words[1:]
        if word == "(":
            value, rest = self._call(rest, dot)
            assert rest[0] == ")"
            return value, rest[1:]
        if word.startswith('"'):
            return json.loads(word), rest
        if word in ("true", "false"):
            return word == "true", rest
        if word.isdigit():
            return int(word), rest
        base, *fields = word.split(".")
        value = self.vars[base] if base.startswith("$") else dot
        for field in fields:
            value = value[field]
        return value, rest


def modelfile(directory: Path) -> dict:
    """The Modelfile's FROM, TEMPLATE, PARAMETER stop values and SYSTEM."""
    text = (directory / "Modelfile").read_text()
    template = re.search(r'^TEMPLATE """(.*?)"""$', text, re.S | re.M).group(1)
    system = re.search(r'^SYSTEM """(.*?)"""$', text, re.S | re.M)
    return {"from": re.search(r"^FROM (.+)$", text, re.M).group(1), "template": template,
            "stop": re.findall(r'^PARAMETER stop "(.+)"$', text, re.M), "system": system and system.group(1)}


def ollama_prompt(template: str, messages: list[dict], system: str | None) -> str:
    """What Ollama sends the model: the request's messages, after the Modelfile's SYSTEM when they have none."""
    if system and not any(m["role"] == "system" for m in messages):
        messages = [{"role": "system", "content": system}, *messages]
    return GoTemplate(template).render(Messages=[{"Role": m["role"], "Content": m["content"]} for m in messages])


CONVERSATIONS = (
    CHAT,
    CHAT[1:],
    [*CHAT, {"role": "assistant", "content": "Try Tavira.\nQuiet, and the food is great."},
     {"role": "user", "content": "And in June?"}],
)
SHARED = "You are a travel assistant. Answer in two sentences."


@pytest.mark.parametrize("arch", ["qwen2", "gemma3"])
def test_modelfile_template_renders_the_training_prompt_and_stops_at_the_end_of_turn(arch, built, home, tmp_path):
    from transformers import AutoTokenizer

    rows = [{"messages": [{"role": "system", "content": SHARED}, {"role": "user", "content": f"Q{i}"},
                          {"role": "assistant", "content": f"A{i}"}]} for i in range(3)]
    lab = Lab(home, built, (arch,), training_rows=rows)
    files = export_model(lab.registry, lab.models[arch], ExportRequest("gguf", ollama=True), tmp_path / "o")
    gguf_name = next(f.name for f in files if f.name.endswith(".gguf"))
    assert {f.name for f in files} == {gguf_name, "Modelfile"}
    found = modelfile(tmp_path / "o")
    assert found["from"] == f"./{gguf_name}"
    assert found["stop"] == [END_OF_TURN[arch]]
    assert found["system"] == SHARED  # every training conversation shared it
    tokenizer = AutoTokenizer.from_pretrained(built[arch][1])
    for messages in CONVERSATIONS:
        expected = tokenizer.apply_chat_template(
            messages if any(m["role"] == "system" for m in messages) else
            [{"role": "system", "content": SHARED}, *messages], tokenize=False, add_generation_prompt=True)
        assert ollama_prompt(found["template"], messages, found["system"]) == expected

    export_model(lab.registry, lab.models[arch], ExportRequest("gguf", ollama=True, system="Be brief."),
                 tmp_path / "given")
    assert modelfile(tmp_path / "given")["system"] == "Be brief."


def test_modelfile_without_a_shared_system_message_and_a_template_ollama_cannot_take(built, home, tmp_path):
    rows = [{"messages": [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"}]},
            {"messages": [{"role": "system", "content": SHARED}, {"role": "user", "content": "Q2"},
                          {"role": "assistant", "content": "A2"}]}]
    lab = Lab(home, built, ("llama",), training_rows=rows)
    export_model(lab.registry, lab.models["llama"], ExportRequest("gguf", ollama=True), tmp_path / "o")
    assert modelfile(tmp_path / "o")["system"] is None
    assert ollama_prompt(modelfile(tmp_path / "o")["template"], CHAT, None) == (
        f"<|im_start|>system\n{CHAT[0]['content']}<|im_end|>\n<|im_start|>user\n{CHAT[1]['content']}<|im_end|>\n"
        "<|im_start|>assistant\n")

    # a fine-tune whose template is neither ChatML nor Gemma's: refused before anything is written
    adapter = tmp_path / "llama3-style"
    shutil.copytree(built["llama"][1], adapter)
    (adapter / "chat_template.jinja").write_text(
        "{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n{{ m['content'] }}<|eot_id|>"
        "{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")
    lab.add("ft:tiny-llama:local:other:llama", "tiny-llama", adapter)
    with pytest.raises(InvalidRequest) as refused:
        export_model(lab.registry, "ft:tiny-llama:local:other:llama", ExportRequest("gguf", ollama=True),
                     tmp_path / "refused")
    assert refused.value.param == "ollama" and "ChatML" in refused.value.message
    assert not (tmp_path / "refused").exists() and not list(tmp_path.glob(".refused*"))


# --- bad input -------------------------------------------------------------------------------------------------

def test_bad_requests_are_refused_naming_the_field_and_leave_nothing(built, home, tmp_path):
    lab = Lab(home, built, ("llama",))
    model = lab.models["llama"]
    out = tmp_path / "out"
    cases = [
        ("ft:tiny-llama:local:export:missing", ExportRequest("merged"), ModelNotFound, "model"),
        ("nonexistent-base", ExportRequest("gguf"), ModelNotFound, "model"),
        ("tiny-llama", ExportRequest("merged"), InvalidRequest, "model"),  # a base model: nothing to merge
        ("tiny-llama", ExportRequest("peft"), InvalidRequest, "model"),
        (model, ExportRequest("onnx"), InvalidRequest, "format"),
        (model, ExportRequest("gguf", quant="q2_k"), InvalidRequest, "quant"),
        (model, ExportRequest("merged", quant="q8_0"), InvalidRequest, "quant"),
        (model, ExportRequest("peft", ollama=True), InvalidRequest, "ollama"),
    ]
    for model_id, request, error, param in cases:
        with pytest.raises(error) as refused:
            export_model(lab.registry, model_id, request, out)
        assert refused.value.param == param, (model_id, request)
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["home"]

    # a full fine-tune has no adapter; merged gives its weights as they are
    lab.add("ft:tiny-llama:local:full:llama", "tiny-llama", built["llama"][0], method="full")
    with pytest.raises(InvalidRequest) as refused:
        export_model(lab.registry, "ft:tiny-llama:local:full:llama", ExportRequest("peft"), out)
    assert refused.value.param == "format" and "full fine-tune" in refused.value.message
    export_model(lab.registry, "ft:tiny-llama:local:full:llama", ExportRequest("merged"), out)

    # an existing output directory is never touched
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(InvalidRequest) as refused:
        export_model(lab.registry, model, ExportRequest("peft"), out)
    assert refused.value.param == "out" and sorted(p.name for p in out.iterdir()) == before


def test_a_disk_that_fills_up_mid_export_leaves_nothing_behind(built, home, tmp_path):
    import errno
    import os
    import subprocess

    lab = Lab(home, built, ("llama",))
    small = tmp_path / "small"
    small.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=128k", "tmpfs", str(small)],
                                           capture_output=True).returncode:
        pytest.skip("mounting a small tmpfs needs root (and a system that allows mounts)")
    try:
        for fmt in ("merged", "gguf"):  # ~400 kB of safetensors, ~250 kB of GGUF: neither fits in 128 kB
            with pytest.raises(OSError) as full:
                export_model(lab.registry, lab.models["llama"], ExportRequest(fmt), small / fmt)
            assert full.value.errno == errno.ENOSPC
            assert list(small.iterdir()) == []
    finally:
        subprocess.run(["umount", str(small)], check=True)
