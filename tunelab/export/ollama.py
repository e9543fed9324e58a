"""An Ollama Modelfile beside the GGUF file: `ollama create NAME -f Modelfile` builds the model from it.

Ollama does not run the Jinja chat template inside the GGUF; it renders prompts with its own Go template
(`TEMPLATE`). tunelab recognises the two turn formats its models train with — ChatML and Gemma's — by rendering
the training template on probe conversations and comparing with each format, and writes the Go template that
renders the same text. A template that is neither is refused rather than approximated: a wrong template is what
makes an exported model talk gibberish or never stop.

`PARAMETER stop` names each end-of-turn marker. `SYSTEM` is the system message the caller gives, else the one
every training conversation of the job shared, else the template's own default system message (SmolLM2 has one),
else none.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..config import get_settings
from ..errors import InvalidRequest, NotFound
from ..models.registry import Registry
from ..store.files import Files
from .source import Source, adds_bos, end_of_turn_markers

IM_START, IM_END = "<|im_start|>", "<|im_end|>"
START_OF_TURN, END_OF_TURN = "<start_of_turn>", "<end_of_turn>"

# Ollama puts the system message (the request's, else SYSTEM) first in .Messages.
CHATML_TEMPLATE = (
    "{{- range .Messages }}<|im_start|>{{ .Role }}\n"
    "{{ .Content }}<|im_end|>\n"
    "{{ end }}<|im_start|>assistant\n"
)
# Gemma has no system role: a leading system message is put before the first turn's text, as Gemma's template does.
GEMMA_TEMPLATE = (
    "{{- $system := \"\" }}{{- $first := true }}"
    "{{- range $i, $m := .Messages }}"
    "{{- if and (eq $i 0) (eq $m.Role \"system\") }}{{ $system = printf \"%s\\n\\n\" $m.Content }}"
    "{{- else }}<start_of_turn>{{ if eq $m.Role \"assistant\" }}model{{ else }}{{ $m.Role }}{{ end }}\n"
    "{{ if $first }}{{ $system }}{{ end }}{{ $m.Content }}<end_of_turn>\n"
    "{{ $first = false }}"
    "{{- end }}"
    "{{- end }}<start_of_turn>model\n"
)

PROBES = (
    [{"role": "system", "content": "S1"}, {"role": "user", "content": "U1"}, {"role": "assistant", "content": "A1"},
     {"role": "user", "content": "U2"}],
    [{"role": "user", "content": "U1"}, {"role": "assistant", "content": "A1"}, {"role": "user", "content": "U2"}],
)


@dataclass
class TurnFormat:
    name: str  # "chatml" | "gemma"
    template: str  # Ollama's Go template
    default_system: str | None = None  # the system message the training template inserts when there is none


def chatml(messages: list[dict]) -> str:
    return "".join(f"{IM_START}{m['role']}\n{m['content']}{IM_END}\n" for m in messages) + f"{IM_START}assistant\n"


def gemma(messages: list[dict], bos: str = "") -> str:
    system = ""
    if messages and messages[0]["role"] == "system":
        system, messages = messages[0]["content"] + "\n\n", messages[1:]
    turns = "".join(f"{START_OF_TURN}{'model' if m['role'] == 'assistant' else m['role']}\n"
                    f"{system if i == 0 else ''}{m['content']}{END_OF_TURN}\n" for i, m in enumerate(messages))
    return f"{bos}{turns}{START_OF_TURN}model\n"


def turn_format(tokenizer) -> TurnFormat:
    """The training template's turn format, recognised by what it renders; refused when it is neither."""
    with_system, without = (tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True)
                            for p in PROBES)
    if with_system == chatml(PROBES[0]):
        if without == chatml(PROBES[1]):
            return TurnFormat("chatml", CHATML_TEMPLATE)
        head = f"{IM_START}system\n"
        if without.startswith(head) and f"{IM_END}\n" in without:
            default = without[len(head):without.index(f"{IM_END}\n")]
            if without == chatml([{"role": "system", "content": default}, *PROBES[1]]):
                return TurnFormat("chatml", CHATML_TEMPLATE, default)
    bos = tokenizer.bos_token or ""
    for rendered_bos in ((bos,) if bos else ()) + ("",):
        if with_system == gemma(PROBES[0], rendered_bos) and without == gemma(PROBES[1], rendered_bos):
            # The template's own bos: written in the Go template unless the GGUF has llama.cpp add it already.
            literal = rendered_bos if rendered_bos and not adds_bos(tokenizer) else ""
            return TurnFormat("gemma", literal + GEMMA_TEMPLATE)
    raise InvalidRequest("the model's chat template is neither ChatML nor Gemma's turn format, the two tunelab can "
                         "translate into Ollama's template language; export without --ollama and run the GGUF file "
                         "with llama.cpp, which reads the template from the file", param="ollama")


def write_modelfile(source: Source, registry: Registry, work: Path, gguf_file: Path, system: str | None) -> Path:
    form = turn_format(source.tokenizer)
    if system is None:
        system = job_system_message(registry, source.job_id) or form.default_system
    lines = [f"FROM ./{gguf_file.name}", "", f'TEMPLATE """{form.template}"""', ""]
    lines += [f'PARAMETER stop "{marker}"' for marker in end_of_turn_markers(source.tokenizer)]
    if system:
        if '"""' in system:
            raise InvalidRequest('the system message contains """, which ends a Modelfile string', param="system")
        lines += ["", f'SYSTEM """{system}"""']
    path = work / "Modelfile"
    path.write_text("\n".join(lines) + "\n")
    return path


def job_system_message(registry: Registry, job_id: str | None) -> str | None:
    """The system message every training conversation of the job begins with, if they all share one."""
    if job_id is None:
        return None
    rows = registry.db.query("SELECT request FROM jobs WHERE id = ?", (job_id,))
    file_id = json.loads(rows[0]["request"]).get("training_file") if rows else None
    if not file_id:
        return None
    settings = get_settings()
    try:
        path = Files(registry.db, settings.state_dir / "files", settings.max_file_bytes).path(file_id)
        lines = path.read_text(encoding="utf-8").splitlines()
    except (NotFound, OSError):  # the training file was deleted since: nothing to take the message from
        return None
    systems = set()
    for line in filter(str.strip, lines):
        messages = json.loads(line).get("messages") or [{}]
        first = messages[0]
        systems.add(first.get("content") if first.get("role") == "system" else None)
    shared = systems.pop() if len(systems) == 1 else None
    return shared if isinstance(shared, str) else None
