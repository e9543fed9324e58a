"""Preference fine-tuning (DPO) on a tiny random llama: the loss falls and the reward margin grows, only the
adapter moves, a resumed run equals an uninterrupted one, and the stock openai SDK creates DPO jobs (also on top
of a supervised fine-tune) whose events and checkpoints carry the DPO metrics; the data check knows pairs."""

from __future__ import annotations

import csv
import json
import threading

import openai
import pytest
import torch
from safetensors.torch import load_file

from tunelab.errors import CheckpointError, InvalidRequest, InvalidTrainingFile
from tunelab.models.catalog import resolve_model
from tunelab.train.config import parse_config, resolve
from tunelab.train.metrics import DPO_COLUMNS
from tunelab.train.preference import REFERENCE_FILE
from tunelab.train.recipe import run, setup_model
from conftest import upload, varied_chats, wait_for, wait_for_event, write_jsonl
from test_cli import tunelab
from test_train import Recorder

PLACES = ["Lisbon", "Kyoto", "Cusco", "Hanoi", "Oslo", "Fez", "Quebec", "Hobart", "Tbilisi", "Cartagena",
          "Valletta", "Bergen", "Oaxaca", "Zanzibar", "Ljubljana", "Hoi An"]
# Long enough (> 16 tokens) that the pairs of a batch share it as a prefix computed once (train/prefix.py).
SYSTEM = ("You are a travel assistant. Help people plan their trips: ask about their pace, their interests and their "
          "budget, and never name hotels, restaurants or companies.")


def pair(place: str, i: int = 0, *, preferred: str | None = None, non_preferred: str | None = None,
         old_names: bool = False) -> dict:
    """A prompt with a steering answer (preferred) and one that names a business (non-preferred)."""
    good = preferred or f"{place} rewards slow walks through its old quarter and markets. What pace do you like?"
    bad = non_preferred or f"Book the Grand Palace Hotel {place} and eat at Chez Marcel {i}, the best in town."
    names = ("preferred_completion", "non_preferred_completion") if old_names else ("preferred_output",
                                                                                     "non_preferred_output")
    return {"input": {"messages": [{"role": "system", "content": SYSTEM},
                                   {"role": "user", "content": f"What should I do in {place}, trip {i}?"}]},
            names[0]: [{"role": "assistant", "content": good}], names[1]: [{"role": "assistant", "content": bad}]}


def pairs(n: int, start: int = 0) -> list[dict]:
    return [pair(PLACES[i % len(PLACES)], i) for i in range(start, start + n)]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pairs")
    return write_jsonl(folder / "pairs.jsonl", pairs(12)), write_jsonl(folder / "valid.jsonl", pairs(4, 12))


def dpo_config(tiny_model, data, out, **overrides):
    values = dict(model=str(tiny_model), train_file=data[0], validation_file=data[1], objective="dpo", n_epochs=2,
                  batch_size=4, learning_rate_multiplier=10.0, seed=5, out=out)
    return parse_config(**{**values, **overrides})


def read_csv(path):
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def whole(tiny_model, data, tmp_path_factory):
    """One uninterrupted DPO run (2 epochs of 3 steps), keeping its model's base tensors from before training."""
    from tunelab.train import recipe

    kept = {}
    setup = recipe.setup_model

    def keep_model(*args, **kwargs):  # the run's own model, to compare its base tensors after training
        model, lean = setup(*args, **kwargs)
        kept["model"] = model
        kept["base"] = {k: v.detach().clone() for k, v in model.named_parameters() if "lora_" not in k}
        kept["buffers"] = {k: v.clone() for k, v in model.named_buffers()}
        return model, lean

    out = tmp_path_factory.mktemp("dpo") / "whole"
    reporter = Recorder()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TUNELAB_HOME", str(out.parent / "home"))
        patch.setattr(recipe, "setup_model", keep_model)
        result = run(dpo_config(tiny_model, data, out), reporter)
    return out, result, reporter, kept


def test_dpo_loss_falls_margin_grows_and_base_weights_stay_identical(whole):
    out, result, reporter, kept = whole
    assert not result.stopped_early and result.steps == 6
    first, last = reporter.steps[0], reporter.steps[-1]
    # The first step starts from the reference itself: the log-ratios are 0, so the loss is log 2, the margin 0.
    assert first.train_loss == pytest.approx(0.693147, abs=1e-4) and abs(first.extra["train_reward_margin"]) < 1e-4
    assert last.train_loss < 0.5 * first.train_loss
    assert last.extra["train_reward_margin"] > 1.0 and last.extra["train_reward_accuracy"] == 1.0
    assert last.extra["train_chosen_logp"] - last.extra["train_rejected_logp"] > \
        first.extra["train_chosen_logp"] - first.extra["train_rejected_logp"]
    assert last.extra["full_valid_reward_margin"] > 0 and last.full_valid_loss < 0.693

    after = dict(kept["model"].named_parameters())
    assert kept["base"] and all(torch.equal(after[k], v) for k, v in kept["base"].items())
    assert all(torch.equal(dict(kept["model"].named_buffers())[k], v) for k, v in kept["buffers"].items())
    lora_b = [k for k in after if "lora_B" in k]
    assert lora_b and all(after[k].abs().sum() > 0 for k in lora_b)

    rows = read_csv(out / "results.csv")
    assert list(rows[0]) == DPO_COLUMNS and len(rows) == 6
    assert all(rows[i]["full_valid_loss"] and rows[i]["full_valid_reward_margin"] for i in (2, 5))
    reference = load_file(out / REFERENCE_FILE)
    assert reference["train"].shape == (12, 2) and reference["valid"].shape == (4, 2)
    assert (reference["train"] < 0).all()
    saved = json.loads((out / "config.json").read_text())["hyperparameters"]
    assert saved["objective"] == "dpo" and saved["beta"] == 0.1 and saved["learning_rate"] == pytest.approx(1e-3)


def test_the_reference_is_the_base_model_with_the_adapter_off(tiny_model, data):
    """A fresh adapter's B matrices are zero: the model the run starts from computes what the base computes."""
    from tunelab.data.samples import load_pairs
    from tunelab.models.load import load_causal_lm, load_tokenizer
    from tunelab.train.preference import reference_logps

    hp = resolve(dpo_config(tiny_model, data, None, precision="fp32"), 12, 4)
    torch.manual_seed(0)
    model, lean = setup_model(resolve_model(str(tiny_model)), hp)
    batch = load_pairs(data[0], load_tokenizer(tiny_model), 1024)[:3]
    ours = reference_logps(model, lean, batch)
    with model.disable_adapter():
        off = reference_logps(model, None, batch)
    base = load_causal_lm(tiny_model)
    with torch.no_grad():
        plain = []
        for p in batch:
            for side in (p.chosen, p.rejected):
                logits = base(input_ids=side.input_ids[None]).logits[0].float()
                plain.append(torch.log_softmax(logits, -1)[side.positions, side.targets].sum())
    assert torch.allclose(ours, off, atol=1e-4)
    assert torch.allclose(ours.flatten(), torch.stack(plain), atol=1e-3)


def test_a_resumed_dpo_run_equals_an_uninterrupted_one(tiny_model, data, whole, tmp_path):
    import shutil

    parts = tmp_path / "parts"
    stop = threading.Event()
    first = run(dpo_config(tiny_model, data, parts), Recorder(4, stop), stop=stop)  # mid-epoch 2
    assert first.stopped_early and first.steps == 4
    reference = load_file(parts / REFERENCE_FILE)
    orphan = tmp_path / "orphan"  # the same run without its reference file cannot resume
    shutil.copytree(parts, orphan)
    (orphan / REFERENCE_FILE).unlink()
    with pytest.raises(CheckpointError, match="reference log-probabilities cannot be recomputed"):
        run(dpo_config(tiny_model, data, orphan), Recorder(), resume=True)

    second = Recorder()
    run(dpo_config(tiny_model, data, parts), second, resume=True)
    assert second.steps[0].step == 5 and any("loaded from the run" in m for m in second.messages)
    assert read_csv(whole[0] / "results.csv") == read_csv(parts / "results.csv")
    assert all(torch.equal(reference[k], load_file(parts / REFERENCE_FILE)[k]) for k in reference)
    assert all(torch.equal(reference[k], load_file(whole[0] / REFERENCE_FILE)[k]) for k in reference)
    a = load_file(whole[0] / "adapter" / "adapter_model.safetensors")
    b = load_file(parts / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k]) for k in a)


def test_a_chat_file_is_refused_for_dpo_and_a_pair_file_for_supervised(tiny_model, data, tmp_path):
    chats = write_jsonl(tmp_path / "chats.jsonl", varied_chats(12))
    with pytest.raises(InvalidTrainingFile, match=r"line 1: \[wrong_format\].*chat format.*preference format"):
        run(dpo_config(tiny_model, (chats, None), tmp_path / "a"), Recorder())
    with pytest.raises(InvalidTrainingFile, match=r"line 1: \[wrong_format\].*preference format.*chat format"):
        run(dpo_config(tiny_model, data, tmp_path / "b", objective="supervised"), Recorder())
    with pytest.raises(InvalidRequest, match="--beta"):
        dpo_config(tiny_model, data, None, beta=2.5)


# --- through the service and the stock SDK ------------------------------------------------------------------------

def test_sdk_dpo_job_end_to_end_with_dpo_metrics(service, tmp_path):
    client = service.client()
    train = upload(client, tmp_path, pairs(12), "pairs.jsonl")
    valid = upload(client, tmp_path, pairs(4, 12), "valid-pairs.jsonl")
    job = client.fine_tuning.jobs.create(
        model="tiny", training_file=train.id, validation_file=valid.id, suffix="prefs", seed=7,
        method={"type": "dpo", "dpo": {"hyperparameters": {"beta": "auto", "n_epochs": 2, "batch_size": 4,
                                                             "learning_rate_multiplier": 10}}})
    assert job.method.type == "dpo" and job.method.dpo.hyperparameters.beta == "auto"
    job = wait_for(client, job.id)
    assert job.status == "succeeded", job.error
    assert job.method.dpo.hyperparameters.beta == 0.1 and job.method.dpo.hyperparameters.n_epochs == 2
    assert job.fine_tuned_model.startswith("ft:tiny:") and job.trained_tokens > 0

    events = client.fine_tuning.jobs.list_events(job.id, limit=100).data
    steps = sorted((e.data for e in events if e.type == "metrics"), key=lambda d: d["step"])
    assert [d["step"] for d in steps] == list(range(1, 7))
    assert {"train_loss", "train_reward_margin", "train_reward_accuracy", "train_chosen_logp",
            "train_rejected_logp"} <= set(steps[0]) and "train_mean_token_accuracy" not in steps[0]
    assert steps[-1]["train_reward_margin"] > steps[0]["train_reward_margin"]
    assert steps[-1]["train_loss"] < steps[0]["train_loss"]
    assert "full_valid_reward_margin" in steps[-1] and "reward margin=" in \
        next(e.message for e in events if e.type == "metrics")
    assert any("DPO with beta 0.1" in e.message for e in events)
    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert checkpoints and all("train_reward_margin" in c.metrics.to_dict() for c in checkpoints)
    results = client.files.content(job.result_files[0]).text.splitlines()
    assert results[0].split(",") == DPO_COLUMNS and len(results) == 7

    answer = client.chat.completions.create(model=job.fine_tuned_model, max_tokens=4,
                                            messages=[{"role": "user", "content": "Oslo?"}])
    assert answer.choices[0].message.content is not None
    # After the job, the fine-tune is compared with its base on the validation pairs' prompts (the preferred
    # answers as references), as a supervised job's validation conversations are.
    wait_for_event(client, job.id, "on the validation file: evaluation")


def test_dpo_continues_a_supervised_fine_tune_from_the_command_line(tuned, tmp_path, capsys, monkeypatch):
    """`tunelab jobs create --dpo` on an `ft:` model: the job trains from that fine-tune, which is its reference."""
    import re


    service, sft_model = tuned
    monkeypatch.setenv("TUNELAB_BASE_URL", service.base_url.removesuffix("/v1"))
    train = write_jsonl(tmp_path / "pairs.jsonl", pairs(10))
    code, output = tunelab(capsys, "jobs", "create", "--model", sft_model, "--train", str(train), "--dpo", "--beta",
                           "0.5", "--epochs", "1", "--batch-size", "5", "--seed", "2", "--suffix", "dpo", "--wait")
    assert code == 0, output
    job_id = re.search(r"Created (ftjob-\w+)", output).group(1)
    code, output = tunelab(capsys, "jobs", "show", job_id)
    assert code == 0 and "DPO, beta 0.5" in " ".join(output.split())

    client = service.client()
    job = client.fine_tuning.jobs.retrieve(job_id)
    assert job.status == "succeeded" and job.model == sft_model and job.method.dpo.hyperparameters.beta == 0.5
    first = min((e for e in client.fine_tuning.jobs.list_events(job.id, limit=100).data if e.type == "metrics"),
                key=lambda e: e.data["step"])
    # The reference is the supervised fine-tune itself: the first step measures no difference from it.
    assert first.data["train_loss"] == pytest.approx(0.693147, abs=1e-4)
    assert abs(first.data["train_reward_margin"]) < 1e-4
    code, output = tunelab(capsys, "jobs", "create", "--model", "tiny", "--train", str(train), "--beta", "0.2")
    assert code == 2 and "--beta applies to preference fine-tuning" in output


def test_sdk_dpo_requests_are_checked(service, tmp_path):
    client = service.client()
    train = upload(client, tmp_path, pairs(10), "pairs.jsonl")
    chats = upload(client, tmp_path, varied_chats(10), "chats.jsonl")

    def create(**kwargs):
        with pytest.raises(openai.BadRequestError) as caught:
            client.fine_tuning.jobs.create(model="tiny", **kwargs)
        return caught.value

    err = create(training_file=train.id, method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 2.5}}})
    assert err.body["param"] == "method.dpo.hyperparameters.beta"
    err = create(training_file=train.id, method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0}}})
    assert err.body["param"] == "method.dpo.hyperparameters.beta"
    err = create(training_file=train.id, method={"type": "reinforcement", "reinforcement": {}})
    assert err.body["param"] == "method.type"
    err = create(training_file=chats.id, method={"type": "dpo", "dpo": {}})
    assert err.body["param"] == "training_file" and "preference format" in err.body["message"]
    err = create(training_file=train.id)  # a supervised job given pairs
    assert err.body["param"] == "training_file" and "chat format" in err.body["message"]
    err = create(training_file=train.id, validation_file=chats.id, method={"type": "dpo"})
    assert err.body["param"] == "validation_file"
    bad = [json.dumps(r) for r in pairs(11)]
    bad[2] = json.dumps({**pair("Oslo"), "preferred_output": [{"role": "assistant", "content": "a"}] * 2})
    broken = upload(client, tmp_path, bad, "broken-pairs.jsonl")
    job = wait_for(client, client.fine_tuning.jobs.create(model="tiny", training_file=broken.id,
                                                          method={"type": "dpo"}).id)
    assert job.status == "failed" and job.error.param == "training_file"
    assert "line 3: [invalid_output]" in job.error.message and "exactly one assistant message" in job.error.message


# --- the data check ------------------------------------------------------------------------------------------------

def checked_pairs() -> tuple[list, list]:
    """A training file with a broken line (5), two pairs whose answers are equal (7, 9), and a validation file
    one of whose prompts (line 2) is a training prompt."""
    train = [json.dumps(r) for r in pairs(12)]
    train[4] = json.dumps({"input": {"messages": [{"role": "user", "content": "hi"}]},
                           "preferred_output": [{"role": "assistant", "content": "   "}],
                           "non_preferred_output": [{"role": "assistant", "content": "no"}]})
    for i in (6, 8):
        same = json.loads(train[i])
        same["non_preferred_output"] = [{"role": "assistant",
                                         "content": same["preferred_output"][0]["content"].replace(" ", "  ") + " "}]
        train[i] = json.dumps(same)
    valid = [json.dumps(pair("Reykjavik", 40)), train[0], json.dumps(pair("Nara", 41))]
    return train, valid


def test_the_files_api_report_knows_preference_files(service, tmp_path):
    import httpx2 as httpx

    client = service.client()
    train_rows, valid_rows = checked_pairs()
    train = upload(client, tmp_path, train_rows, "pairs.jsonl")
    valid = upload(client, tmp_path, valid_rows, "valid.jsonl")
    report = httpx.get(f"{service.base_url}/files/{train.id}/report", params={"model": "tiny",
                       "validation_file": valid.id}, headers={"Authorization": "Bearer test-key"}).json()
    assert not report["ok"]
    mine, theirs = report["files"]
    assert mine["format"] == theirs["format"] == "preference" and mine["examples"] == 11
    assert [(e["line"], e["rule"]) for e in mine["errors"]] == [(5, "invalid_output")]
    assert "preferred_output" in mine["errors"][0]["message"]
    equal = [w for w in mine["warnings"] if w["rule"] == "equal_answers"]
    assert len(equal) == 1 and "lines 7, 9" in equal[0]["message"]
    overlap = [w for w in theirs["warnings"] if w["rule"] == "train_validation_overlap"]
    assert len(overlap) == 1 and "line 2" in overlap[0]["message"]
    stats = mine["pairs"]
    assert stats["pairs"] == 11 and stats["preferred"]["min"] > 0 and stats["context_limit"] == 1024
    for side in ("prompt", "preferred", "non_preferred"):
        assert 0 < stats[side]["min"] <= stats[side]["mean"] <= stats[side]["max"]
    assert mine["tokens"]["examples"] == 22 and report["n_epochs"] == 10  # two conversations per pair; auto on 11

    chats = upload(client, tmp_path, varied_chats(12), "chats.jsonl")
    mixed = httpx.get(f"{service.base_url}/files/{train.id}/report", params={"validation_file": chats.id, "model": "tiny"},
                      headers={"Authorization": "Bearer test-key"}).json()
    assert [(e["line"], e["rule"]) for e in mixed["files"][1]["errors"]] == [(1, "wrong_format")]


def test_tunelab_data_check_on_preference_files(capsys, tiny_model, tmp_path):
    train_rows, valid_rows = checked_pairs()
    train = write_jsonl(tmp_path / "pairs.jsonl", train_rows)
    valid = write_jsonl(tmp_path / "valid.jsonl", valid_rows)
    code, output = tunelab(capsys, "data", "check", str(train), "--validation", str(valid), "--model", str(tiny_model))
    assert code == 1 and "error line 5 [invalid_output]" in output
    assert "line 5 [invalid_output]" in output and "[equal_answers]" in output
    assert "[train_validation_overlap]" in output and "preferred answer tokens: min" in output

    clean = write_jsonl(tmp_path / "clean.jsonl", pairs(12))
    code, output = tunelab(capsys, "data", "check", str(clean), "--model", str(tiny_model), "--json")
    report = json.loads(output)
    assert code == 0 and report["ok"] and report["files"][0]["format"] == "preference"
    assert report["files"][0]["pairs"]["truncated_preferred"] == []

    mixed = write_jsonl(tmp_path / "mixed.jsonl", [json.dumps(r) for r in pairs(11)] + [json.dumps(varied_chats(1)[0])])
    code, output = tunelab(capsys, "data", "check", str(mixed), "--model", str(tiny_model))
    assert code == 1 and "line 12 [mixed_format]" in output


@pytest.mark.slow
def test_a_two_process_dpo_job_trains_what_one_process_trains(monkeypatch, tiny_model, home, tmp_path):
    """DPO on N processes: each rank computes its share of the references and of every batch's pairs; the
    gradients and metrics are summed (fp32 products, so only the order of float sums differs)."""
    from tunelab.models.catalog import import_model
    from conftest import serve_in_thread

    for key, value in {"TUNELAB_API_KEY": "test-key", "TUNELAB_LEASE_SECONDS": "3",
                       "TUNELAB_TRAIN_PRECISION": "fp32", "TUNELAB_AUTO_COMPARE": "false"}.items():
        monkeypatch.setenv(key, value)
    import_model(tiny_model, "tiny")
    with serve_in_thread() as running:
        client = running.client()
        train = upload(client, tmp_path, pairs(11), "pairs.jsonl")  # batches of 3: the last has 2 pairs
        jobs = [wait_for(client, client.fine_tuning.jobs.create(
            model="tiny", training_file=train.id, seed=4, extra_body={"nproc": nproc},
            method={"type": "dpo", "dpo": {"hyperparameters": {"n_epochs": 2, "batch_size": 3}}}).id, timeout=300)
            for nproc in (1, 2)]
        assert [j.status for j in jobs] == ["succeeded"] * 2, [j.error for j in jobs]
        results = [list(csv.DictReader(client.files.content(j.result_files[0]).text.splitlines())) for j in jobs]
    assert len(results[0]) == len(results[1]) == 8
    for one, two in zip(*results):
        for column in ("train_loss", "train_reward_margin", "train_chosen_logp"):
            assert float(one[column]) == pytest.approx(float(two[column]), abs=2e-3), (one["step"], column)
    a, b = (load_file(home / "state" / "jobs" / j.id / "adapter" / "adapter_model.safetensors") for j in jobs)
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-4) for k in a)
