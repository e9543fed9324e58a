"""Each architecture tunelab takes in (Llama, Qwen2, Gemma 3), end to end on a tiny random model of it, through the
real service and the `openai` SDK: import (what the catalog shows), data check, a LoRA fine-tune (a job) and a full
fine-tune (the recipe, as `tunelab train --method full`, imported back), serving (chat, streaming, the fine-tune's
adapter on the base model's engine, the end-of-turn tokens that stop an answer) and a comparison.

One service for the module (its own TUNELAB_HOME) with the three models; their LoRA jobs train together while the
first tests run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import TRAVEL, serve_in_thread, upload, varied_chats, wait_for, write_jsonl
from test_compare import wait_for_evaluation
from tiny_models import ARCHITECTURES, build

# What each tiny model's catalog entry says, and the tokens that end its assistant turn
EXPECTED = {
    "llama": dict(architecture="llama", fast=True, end=["<|im_end|>"]),
    "qwen2": dict(architecture="qwen2", fast=True, end=["<|im_end|>"]),
    "gemma3": dict(architecture="gemma3", fast=False, end=["<eos>", "<end_of_turn>"]),
}
PROMPTS = [{"id": "may", "messages": [{"role": "user", "content": "Where should I go in May?"}]},
           {"id": "kyoto", "messages": [{"role": "user", "content": "Is Kyoto nice in autumn?"}]}]


@dataclass
class Lab:
    """The service, with a tiny model of each architecture imported as `tiny-<arch>` and a LoRA job on each."""

    home: Path
    service: object
    jobs: dict[str, str]  # arch -> its LoRA job

    def client(self):
        return self.service.client()


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    from tunelab.models.catalog import import_model

    root = tmp_path_factory.mktemp("e2e")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("TUNELAB_HOME", str(root / "home"))
        env.setenv("TUNELAB_BASE_URL", "http://127.0.0.1:9")
        env.setenv("TUNELAB_API_KEY", "test-key")
        env.setenv("TUNELAB_LEASE_SECONDS", "3")
        for arch in ARCHITECTURES:
            import_model(build(arch, root / arch), f"tiny-{arch}")
        with serve_in_thread(max_running_jobs=len(ARCHITECTURES)) as service:  # the three jobs train together
            client = service.client()
            train = upload(client, root, varied_chats(10))
            jobs = {arch: client.fine_tuning.jobs.create(
                model=f"tiny-{arch}", training_file=train.id, suffix="lora", seed=1,
                hyperparameters={"n_epochs": 1, "batch_size": 5}).id for arch in ARCHITECTURES}
            yield Lab(root / "home", service, jobs)


@pytest.fixture(autouse=True)
def home(lab, monkeypatch):
    """This module's tests use the module's service, and its home (conftest's gives each test a new one)."""
    monkeypatch.setenv("TUNELAB_HOME", str(lab.home))
    return lab.home


def tuned(lab, arch: str) -> str:
    job = wait_for(lab.client(), lab.jobs[arch], timeout=180)
    assert job.status == "succeeded", job.error
    return job.fine_tuned_model


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_the_catalog_shows_architecture_context_template_and_fast_paths(lab, arch, capsys):
    from test_cli import tunelab

    model = lab.client().models.retrieve(f"tiny-{arch}").model_dump()
    expected = EXPECTED[arch]
    assert model["architecture"] == expected["architecture"] and model["context_length"] == 1024
    assert model["chat_template"] == "model" and model["parameters"].endswith("K")
    fast = model["fast_paths"]
    assert fast["training"] is fast["decoding"] is expected["fast"]
    assert (fast["note"] is None) is expected["fast"]
    if not expected["fast"]:
        assert fast["note"].startswith("a gemma3 model: its (1 + w) norms")
    code, output = tunelab(capsys, "models", "list", "--base-url", lab.service.base_url.removesuffix("/v1"),
                           "--api-key", "test-key")
    # the row's "about" cell, its wrapped lines joined: from the model's id to the next row's kind
    about = " ".join(output.replace("│", " ").split()).split(f"tiny-{arch} base ")[1].split(" base ")[0]
    assert code == 0 and about.startswith(f"{expected['architecture']}, ") and "1,024-token context" in about
    assert ("fast paths: training and decoding" in about) is expected["fast"]
    assert ("no fast path (a gemma3 model" in about) is not expected["fast"]


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_the_data_check_passes_under_the_models_template(lab, arch):
    from tunelab.data.validate import validate_file
    from tunelab.train.preflight import preflight

    assert not validate_file(TRAVEL / "train.jsonl").errors
    report = preflight(TRAVEL / "train.jsonl", TRAVEL / "valid.jsonl", model=f"tiny-{arch}")
    assert report.ok and report.files[0].tokens is not None and report.billed_tokens > 0


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_a_lora_job_trains_and_says_once_when_the_fast_forward_steps_aside(lab, arch):
    assert tuned(lab, arch).startswith(f"ft:tiny-{arch}:")
    messages = [e.message for e in lab.client().fine_tuning.jobs.list_events(lab.jobs[arch], limit=1000).data]
    aside = [m for m in messages if "steps aside" in m]
    assert len(aside) == (0 if EXPECTED[arch]["fast"] else 1), aside
    assert all("gemma3" in m for m in aside)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_serving_chats_streams_and_runs_the_adapter_beside_the_base(lab, arch):
    client = lab.client()
    model = tuned(lab, arch)
    ask = dict(messages=PROMPTS[0]["messages"], max_tokens=8, temperature=0, seed=1)
    base = client.chat.completions.create(model=f"tiny-{arch}", **ask)
    assert base.choices[0].finish_reason in ("stop", "length") and base.usage.completion_tokens > 0
    chunks = list(client.chat.completions.create(model=model, stream=True, **ask))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    again = client.chat.completions.create(model=model, **ask)  # seeded, greedy: the stream's text
    assert again.choices[0].message.content == streamed

    pool = lab.service.app.state.service.pool
    engine = pool.engines[f"tiny-{arch}"]  # one engine: the base, and the fine-tune as an adapter on it
    assert model in engine.adapters and model not in pool.engines
    assert (engine.decoder is not None) is EXPECTED[arch]["fast"]
    for served in (f"tiny-{arch}", model):  # the tokens that end the assistant's turn, and stop the answer
        target = pool.target(served)
        assert target.end_ids == {target.tokenizer.convert_tokens_to_ids(t) for t in EXPECTED[arch]["end"]}
        assert not target.end_strings


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_a_full_fine_tune_imports_back_and_serves(lab, arch, tmp_path):
    from test_train import Recorder
    from tunelab.models.catalog import import_model
    from tunelab.train.config import parse_config
    from tunelab.train.recipe import run

    train = write_jsonl(tmp_path / "train.jsonl", varied_chats(10))
    result = run(parse_config(model=f"tiny-{arch}", train_file=train, method="full", n_epochs=1, batch_size=5, seed=2,
                              out=tmp_path / "full"), Recorder())
    assert result.steps == 2 and (result.weights / "config.json").is_file()
    imported = import_model(result.weights, f"full-{arch}")
    assert imported.meta["architecture"] == EXPECTED[arch]["architecture"]
    assert imported.chat_template_source == "model"  # the template training used travelled with the weights
    answer = lab.client().chat.completions.create(model=f"full-{arch}", messages=PROMPTS[1]["messages"],
                                                  max_tokens=6, temperature=0)
    assert answer.usage.completion_tokens > 0


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_a_comparison_runs_the_base_and_the_fine_tune(lab, arch):
    client = lab.client()
    model = tuned(lab, arch)
    created = client.post("/evaluations", cast_to=object, body={
        "candidates": [f"tiny-{arch}", model], "prompts": PROMPTS, "max_tokens": 6})
    found = wait_for_evaluation(client, created["id"])
    assert found["status"] == "completed", found["error"]
    report = found["report"]
    assert [c["name"] for c in report["candidates"]] == [f"tiny-{arch}", model]
    assert all(c["errors"] == 0 for c in report["candidates"])
    assert all(a["completion_tokens"] > 0 for p in report["prompts"] for a in p["answers"].values())
