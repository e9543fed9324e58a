"""The `tunelab` command as a user types it: exit codes, readable errors (no tracebacks), files written."""

from __future__ import annotations

import json
import shutil

import pytest

from tunelab.cli.main import main
from conftest import TRAVEL, varied_chats, write_jsonl


def tunelab(capsys, *argv: str) -> tuple[int, str]:
    try:
        main(list(argv))
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    captured = capsys.readouterr()
    return code, captured.out + captured.err


@pytest.fixture
def broken(tmp_path):
    rows = [json.dumps(r) for r in varied_chats(11)]
    rows[2] = '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}]}'
    return write_jsonl(tmp_path / "broken.jsonl", rows)


def test_data_check_names_the_line_and_rule_and_fails(capsys, broken, tiny_model):
    code, output = tunelab(capsys, "data", "check", str(broken), "--model", str(tiny_model))
    assert code == 1
    assert "line 3 [invalid_content] messages[1].content is empty" in output
    assert "Traceback" not in output and "1 error(s)" in output


def test_data_check_json_lists_errors_for_programs(capsys, broken, tiny_model):
    code, output = tunelab(capsys, "data", "check", str(broken), "--model", str(tiny_model), "--json")
    report = json.loads(output)
    assert code == 1 and report["ok"] is False
    assert [(e["line"], e["rule"]) for e in report["files"][0]["errors"]] == [(3, "invalid_content")]


def test_data_check_on_travel_data_passes_with_statistics(capsys, tiny_model):
    code, output = tunelab(capsys, "data", "check", str(TRAVEL / "train.jsonl"), "--validation",
                           str(TRAVEL / "valid.jsonl"), "--model", str(tiny_model), "--json")
    report = json.loads(output)
    assert code == 0 and report["ok"]
    tokens = report["files"][0]["tokens"]
    assert tokens["examples"] == report["files"][0]["examples"] >= 150
    assert sum(b["count"] for b in tokens["histogram"]) == tokens["examples"]
    assert tokens["min"] <= tokens["median"] <= tokens["p95"] <= tokens["max"]
    assert 0 < tokens["trained_total"] < tokens["total"]
    assert report["n_epochs"] == 3 and report["estimated_seconds"] > 0


def test_data_check_terminal_report_has_histogram_and_estimate(capsys, tiny_model, tmp_path):
    code, output = tunelab(capsys, "data", "check", str(write_jsonl(tmp_path / "d.jsonl", varied_chats(12))),
                           "--model", str(tiny_model))
    assert code == 0
    assert "tokens per example" in output and "█" in output and "Training estimate" in output
    assert "ready to train" in output


def test_missing_file_is_a_clean_error(capsys, tmp_path):
    code, output = tunelab(capsys, "data", "check", str(tmp_path / "nope.jsonl"))
    assert code == 2 and "no such file" in output and "Traceback" not in output


def test_models_list_shows_the_catalog(capsys):
    code, output = tunelab(capsys, "models", "list", "--json")
    rows = {r["id"]: r for r in json.loads(output)}
    assert code == 0 and {"SmolLM2-135M-Instruct", "gemma-3-270m"} <= set(rows)
    assert rows["gemma-3-270m"]["chat_template"] == "tunelab default (gemma)"
    code, output = tunelab(capsys, "models", "list")
    assert "SmolLM2-135M-Instruct" in output and "template" in output


def test_models_import_copies_a_safetensors_directory(capsys, tiny_model):
    code, output = tunelab(capsys, "models", "import", str(tiny_model), "--name", "tiny")
    assert code == 0 and "Imported tiny" in output
    rows = {r["id"]: r for r in json.loads(tunelab(capsys, "models", "list", "--json")[1])}
    assert rows["tiny"]["installed"] and rows["tiny"]["parameters"].endswith("K")
    code, output = tunelab(capsys, "models", "import", str(tiny_model), "--name", "tiny")
    assert code == 2 and "already exists" in output


def test_models_import_refuses_pickle_weights_and_remote_code(capsys, tiny_model, tmp_path):
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    shutil.copy(tiny_model / "config.json", pickled)
    (pickled / "pytorch_model.bin").write_bytes(b"not loaded")
    code, output = tunelab(capsys, "models", "import", str(pickled), "--name", "pickled")
    assert code == 2 and "pickle" in output and "Traceback" not in output

    remote = tmp_path / "remote"
    shutil.copytree(tiny_model, remote)
    config = json.loads((remote / "config.json").read_text())
    (remote / "config.json").write_text(json.dumps({**config, "auto_map": {"AutoModel": "x.Y"}}))
    code, output = tunelab(capsys, "models", "import", str(remote), "--name", "remote")
    assert code == 2 and "remote code" in output


def test_train_through_the_cli_writes_the_run(capsys, tiny_model, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", varied_chats(12))
    out = tmp_path / "run"
    code, output = tunelab(capsys, "train", "--model", str(tiny_model), "--train", str(data), "--epochs", "2",
                           "--seed", "1", "--suffix", "ft-travel", "--out", str(out))
    assert code == 0, output
    assert "n_epochs=2" in output and "batch_size=1" in output  # resolved settings are shown
    assert str(out / "adapter") in output
    assert (out / "adapter" / "adapter_model.safetensors").is_file() and (out / "results.csv").is_file()


def test_train_rejects_bad_flags_naming_them(capsys, tiny_model, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", varied_chats(12))
    code, output = tunelab(capsys, "train", "--model", str(tiny_model), "--train", str(data), "--epochs", "0",
                           "--learning-rate-multiplier", "fast")
    assert code == 2 and "--epochs" in output and "--learning-rate-multiplier" in output
    code, output = tunelab(capsys, "train", "--model", "no-such-model", "--train", str(data))
    assert code == 2 and "does not exist" in output and "SmolLM2-135M-Instruct" in output


def test_data_check_reports_examples_over_the_context(capsys, tiny_model, tmp_path):
    long = {"messages": [{"role": "user", "content": "Tell me about Peru. " * 400},
                         {"role": "assistant", "content": "Machu Picchu at dawn is unforgettable. When will you go?"}]}
    data = write_jsonl(tmp_path / "d.jsonl", varied_chats(11) + [long])
    code, output = tunelab(capsys, "data", "check", str(data), "--model", str(tiny_model), "--json")
    tokens = json.loads(output)["files"][0]["tokens"]
    assert code == 0 and tokens["over_limit"] == [12] and tokens["context_limit"] == 1024
    code, output = tunelab(capsys, "data", "check", str(data), "--model", str(tiny_model))
    assert "1 example(s) exceed the 1024-token context" in output and "truncated from the end" in output


def test_ctrl_c_saves_a_checkpoint_and_resume_finishes(tiny_model, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    data = write_jsonl(tmp_path / "d.jsonl", varied_chats(12))
    out = tmp_path / "run"
    command = [sys.executable, "-c", "from tunelab.cli.main import main; main()", "train", "--model",
               str(tiny_model), "--train", str(data), "--epochs", "50", "--seed", "1", "--out", str(out)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and not (out / "results.csv").exists() or \
            len((out / "results.csv").read_text().splitlines()) < 3:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, output
    assert "checkpoint saved" in output and "--resume" in output and "Traceback" not in output
    (checkpoint,) = [p for p in (out / "checkpoints").iterdir()]
    stopped_at = int(checkpoint.name.removeprefix("step-"))
    assert 2 <= stopped_at < 600 and not (out / "adapter").exists()

    done = subprocess.run(command + ["--resume"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"Resuming from step-{stopped_at:06d}" in done.stderr
    assert (out / "adapter" / "adapter_model.safetensors").is_file()


def test_an_unwritable_run_directory_is_a_clean_error(capsys, tiny_model, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", varied_chats(12))
    blocker = tmp_path / "file"
    blocker.write_text("a file where the run directory's parent should be")
    code, output = tunelab(capsys, "train", "--model", str(tiny_model), "--train", str(data),
                           "--out", str(blocker / "run"))
    assert code == 2 and "Not a directory" in output and "Traceback" not in output


def test_export_writes_a_base_models_gguf_without_a_service(capsys, tiny_model, tmp_path):
    import gguf

    from tunelab.models.catalog import import_model

    import_model(tiny_model, "tiny")
    out = tmp_path / "tiny-gguf"
    code, output = tunelab(capsys, "export", "tiny", "--format", "gguf", "--out", str(out))
    assert code == 0, output
    (gguf_file,) = out.glob("*.gguf")
    assert gguf.GGUFReader(gguf_file).fields["tokenizer.chat_template"]  # the template travels with the file
    assert gguf_file.name in output and "total" in output and f"llama-server -m {gguf_file}" in output
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # nothing half-written beside it


def test_export_refuses_bad_options_naming_each_flag(capsys, tiny_model, tmp_path):
    from tunelab.models.catalog import import_model

    code, output = tunelab(capsys, "export", "tiny", "--format", "onnx", "--quant", "q3_k", "--system", "Hi")
    assert code == 2 and "--format" in output and "--quant" in output and "--system" in output
    code, output = tunelab(capsys, "export", "tiny", "--format", "peft", "--ollama")
    assert code == 2 and "--ollama needs --format gguf" in output
    import_model(tiny_model, "tiny")
    code, output = tunelab(capsys, "export", "tiny", "--format", "merged", "--out", str(tmp_path / "m"))
    assert code == 2 and "base model" in output and "Traceback" not in output
    code, output = tunelab(capsys, "export", "ft:tiny:local:nope:0", "--format", "peft", "--out", str(tmp_path / "p"))
    assert code == 2 and "does not exist" in output and "Traceback" not in output
    assert not (tmp_path / "m").exists() and not (tmp_path / "p").exists()
