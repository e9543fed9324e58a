"""Shared fixtures and helpers: a private TUNELAB_HOME per test, a tiny random llama built from a config (no
downloads), the real service on a loopback port, and waiting on its jobs."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

ROOT = Path(__file__).resolve().parent.parent
TRAVEL = ROOT / "examples" / "travel"
CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("TUNELAB_HOME", str(tmp_path / "home"))
    # Client commands must never find a service someone runs on this machine's default port.
    monkeypatch.setenv("TUNELAB_BASE_URL", "http://127.0.0.1:9")
    return tmp_path / "home"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class RunningService:
    base_url: str  # ends in /v1
    key: str
    app: object = None

    def client(self, **kwargs):
        from openai import OpenAI

        return OpenAI(base_url=self.base_url, api_key=self.key, **kwargs)


@contextmanager
def serve_in_thread(**settings) -> Iterator[RunningService]:
    """The real app (API and job worker) under uvicorn on a loopback port, in this process."""
    import uvicorn

    from tunelab.app import create_app
    from tunelab.config import Settings

    port = free_port()
    app = create_app(Settings(**settings))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the service did not start"
        time.sleep(0.02)
    try:
        yield RunningService(f"http://127.0.0.1:{port}/v1", os.environ.get("TUNELAB_API_KEY", ""), app)
    finally:
        server.should_exit = True
        thread.join(60)


@pytest.fixture
def service(monkeypatch, tiny_model) -> Iterator[RunningService]:
    """A running service with the tiny model in its catalog as `tiny` and a known API key."""
    from tunelab.models.catalog import import_model

    monkeypatch.setenv("TUNELAB_API_KEY", "test-key")
    monkeypatch.setenv("TUNELAB_LEASE_SECONDS", "3")
    import_model(tiny_model, "tiny")
    with serve_in_thread() as running:
        yield running


def build_tiny_model(path: Path, *, vocab_size: int = 600, context: int = 1024) -> Path:
    """A byte-level BPE trained on the travel data, with ChatML markers as special tokens, and a 2-layer llama."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    texts = [m["content"] for line in (TRAVEL / "train.jsonl").read_text().splitlines()
             for m in json.loads(line)["messages"]]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                        pad_token="<|endoftext|>")
    tokenizer.chat_template = CHATML
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=48, intermediate_size=96, initializer_range=0.2, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=context,  # larger init: the frozen tied head must be able to reach confident logits
                         tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    LlamaForCausalLM(config).save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-llama")


@pytest.fixture(scope="session")
def _converted_smollm2(tmp_path_factory) -> Path:
    """SmolLM2-135M-Instruct converted from its wheel's GGUF once per test run (about half a minute of CPU)."""
    from tunelab.models.catalog import resolve_model

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TUNELAB_HOME", str(tmp_path_factory.mktemp("smollm2")))
        return resolve_model("SmolLM2-135M-Instruct").path


@pytest.fixture
def smollm2(home, _converted_smollm2) -> Path:
    """The converted SmolLM2 in this test's home, hard-linked (nothing writes a model's files in place), as a
    first use would have left it; tests of the conversion itself start from an empty home instead."""
    import shutil

    target = home / "models" / _converted_smollm2.name
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(_converted_smollm2, target, copy_function=os.link)
    return target


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def chat(user: str = "Where should I go in May?", reply: str = "Lisbon is lovely in May. What do you enjoy?",
         system: str | None = "You are a travel assistant.") -> dict:
    messages = [{"role": "system", "content": system}] if system else []
    return {"messages": messages + [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]}


def varied_chats(n: int) -> list[dict]:
    """n distinct valid conversations (distinct enough not to be near duplicates of each other)."""
    places = ["Lisbon", "Kyoto", "Cusco", "Hanoi", "Oslo", "Fez", "Quebec", "Hobart", "Tbilisi", "Cartagena",
              "Valletta", "Luang Prabang", "Ljubljana", "Zanzibar", "Bergen", "Oaxaca"]
    topics = ["festivals in spring", "hiking trails nearby", "the local markets", "museums on a rainy day",
              "day trips by train", "the weather in autumn"]
    rows = []
    for i in range(n):
        place, topic = places[i % len(places)], topics[i // len(places) % len(topics)]
        rows.append(chat(f"Tell me about {topic} around {place}, trip number {i}?",
                         f"{place} has wonderful options for {topic}: start early and wander. Variant {i} "
                         f"of my answer mentions {place} again. What pace do you like?"))
    return rows


FINAL = ("succeeded", "failed", "cancelled")


def upload(client, tmp_path, rows, name="train.jsonl"):
    path = write_jsonl(tmp_path / name, rows)
    with path.open("rb") as f:
        return client.files.create(file=f, purpose="fine-tune")


def wait_for(client, job_id, statuses=FINAL, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in statuses:
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} still {job.status} after {timeout} s")


def wait_for_event(client, job_id, text, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(text in e.message for e in client.fine_tuning.jobs.list_events(job_id, limit=1000).data):
            return
        time.sleep(0.1)
    raise AssertionError(f"no event with {text!r} in job {job_id}")


@pytest.fixture
def tuned(service, tmp_path):
    """The service with a fine-tune of the tiny model."""
    client = service.client()
    train = upload(client, tmp_path, varied_chats(16))
    job = wait_for(client, client.fine_tuning.jobs.create(
        model="tiny", training_file=train.id, suffix="chat", seed=3,
        hyperparameters={"n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 5}).id)
    assert job.status == "succeeded", job.error
    return service, job.fine_tuned_model


def trainers(job_id: str) -> list[int]:
    """Training processes alive for `job_id` (found by the job id on their command line)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if b"tunelab.jobs.runner" in cmdline and job_id.encode() in cmdline:
            found.append(int(proc.name))
    return found
