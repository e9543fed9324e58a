"""Best checkpoint, not the last: a run that over-fits recommends the epoch with the lowest full validation loss,
in plain words and with its deployable id; early stopping with a patience stops before the planned epochs and
leaves the best checkpoint's weights as the fine-tune; bad settings are refused naming the field."""

from __future__ import annotations

import json

import openai
import pytest
import torch
from safetensors.torch import load_file

from tunelab.train.best import Point, Tracker, recommend
from tunelab.train.config import parse_config
from tunelab.train.recipe import run
from conftest import upload, varied_chats, wait_for, write_jsonl
from test_cli import tunelab
from test_train import Recorder

# Ten templated conversations to learn by heart at a high learning rate, and a validation set whose answers are in
# another register: the training loss keeps falling while the validation loss turns up after a few epochs.
EPOCHS, BATCH, MULTIPLIER = 8, 5, 10.0


def over_fitting_data() -> tuple[list[dict], list[dict]]:
    held_out = varied_chats(14)[10:]
    valid = [{"messages": [m if m["role"] != "assistant" else
                           {"role": "assistant", "content": "Sure! I would suggest " + m["content"][::-1][:60]}
                           for m in chat["messages"]]} for chat in held_out]
    return varied_chats(10), valid


def test_the_rule_in_words():
    points = [Point(4, 1, 2.0, "a"), Point(8, 2, 1.5, "b"), Point(12, 3, 1.7, "c")]
    found = recommend(points)
    assert found.best.name == "b" and found.reason == ("validation loss rose after epoch 2: use checkpoint 2 (step 8, "
                                                       "loss 1.500; the last, epoch 3, has 1.700)")
    found = recommend(points[:2])
    assert found.best.name == "b" and found.reason.startswith("the last checkpoint has the lowest validation loss")
    assert recommend([]) is None
    tracker = Tracker(points)
    assert tracker.epochs_since_best == 1 and tracker.best.step == 8
    tracker.observe(4, 16, 1.5)  # equal is not better: the earlier checkpoint stays the best
    assert tracker.epochs_since_best == 2 and tracker.best.step == 8


def test_early_stopping_ends_on_the_best_checkpoint_which_is_never_pruned(tiny_model, tmp_path):
    train, valid = over_fitting_data()
    config = parse_config(model=str(tiny_model), train_file=write_jsonl(tmp_path / "train.jsonl", train),
                          validation_file=write_jsonl(tmp_path / "valid.jsonl", valid), n_epochs=EPOCHS,
                          batch_size=BATCH, learning_rate_multiplier=MULTIPLIER, seed=3, out=tmp_path / "run",
                          precision="fp32", keep_checkpoints=1, early_stopping_patience=1)
    reporter = Recorder()
    result = run(config, reporter)
    losses = {m.epoch: m.full_valid_loss for m in reporter.steps if m.full_valid_loss is not None}
    epochs = max(losses)
    best = min(losses, key=losses.get)
    assert reporter.steps[-1].train_loss < reporter.steps[0].train_loss  # it learns the training set …
    assert best < epochs < EPOCHS  # … over-fits, and stops before the planned epochs
    assert losses[epochs] > losses[best] and epochs - best == 1  # the patience: one epoch without improvement
    assert not result.stopped_early and result.trained_tokens > 0  # a finished run, not an interrupted one

    found = result.recommendation
    steps_per_epoch = 10 // BATCH
    assert (found["epoch"], found["step"]) == (best, best * steps_per_epoch)
    assert found["reason"] == (f"validation loss rose after epoch {best}: use checkpoint {best} (step {found['step']}, "
                               f"loss {losses[best]:.3f}; the last, epoch {epochs}, has {losses[epochs]:.3f}); early "
                               f"stopping ended training after epoch {epochs}, and the fine-tuned model holds "
                               f"checkpoint {best}'s weights")
    assert any(m.startswith(f"Early stopping: the full validation loss has not improved for 1 epoch(s) since epoch "
                            f"{best}") for m in reporter.messages)
    # keep_checkpoints=1 keeps the last one, and the best one beside it
    kept = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert kept == [found["id"], found["last"]["id"]]
    final = load_file(tmp_path / "run" / "adapter" / "adapter_model.safetensors")
    chosen = load_file(tmp_path / "run" / "checkpoints" / found["id"] / "adapter_model.safetensors")
    last = load_file(tmp_path / "run" / "checkpoints" / found["last"]["id"] / "adapter_model.safetensors")
    assert final.keys() == chosen.keys() and all(torch.equal(final[k], chosen[k]) for k in final)
    assert not all(torch.equal(final[k], last[k]) for k in final)


def test_early_stopping_needs_a_validation_file_and_a_patience_of_one_or_more(service, tmp_path, capsys):
    client = service.client()
    train = upload(client, tmp_path, varied_chats(12))
    with pytest.raises(openai.BadRequestError) as refused:
        client.fine_tuning.jobs.create(model="tiny", training_file=train.id,
                                       extra_body={"early_stopping": {"patience": 2}})
    assert refused.value.body["param"] == "early_stopping" and "validation_file" in refused.value.body["message"]
    valid = upload(client, tmp_path, varied_chats(16)[12:], name="valid.jsonl")
    for patience in (0, -1, "2", None):
        with pytest.raises(openai.BadRequestError) as refused:
            client.fine_tuning.jobs.create(model="tiny", training_file=train.id, validation_file=valid.id,
                                           extra_body={"early_stopping": {"patience": patience}})
        assert refused.value.body["param"].startswith("early_stopping"), refused.value.body
    path = write_jsonl(tmp_path / "cli.jsonl", varied_chats(12))
    code, output = tunelab(capsys, "train", "--train", str(path), "--early-stopping-patience", "2")
    assert code == 2 and output.strip() == ("error: --early-stopping-patience watches the validation loss: give "
                                            "--validation too")
    code, output = tunelab(capsys, "train", "--train", str(path), "--validation", str(path),
                           "--early-stopping-patience", "0")
    assert code == 2 and output.strip().startswith("error: invalid settings: --early-stopping-patience:")
    assert not client.fine_tuning.jobs.list().data  # nothing half-made


def test_the_job_object_names_the_recommended_checkpoint_through_the_sdk(service, tmp_path):
    client = service.client()
    train, valid = over_fitting_data()
    train, valid = upload(client, tmp_path, train), upload(client, tmp_path, valid, name="valid.jsonl")
    job = client.fine_tuning.jobs.create(
        model="tiny", training_file=train.id, validation_file=valid.id, seed=3, suffix="guard",
        hyperparameters={"n_epochs": EPOCHS, "batch_size": BATCH, "learning_rate_multiplier": MULTIPLIER},
        extra_body={"early_stopping": {"patience": 1}})
    assert job.early_stopping == {"patience": 1} and job.recommended_checkpoint is None
    job = wait_for(client, job.id, timeout=240)
    assert job.status == "succeeded", job.error
    found = job.recommended_checkpoint
    checkpoints = {c.fine_tuned_model_checkpoint: c for c in client.fine_tuning.jobs.checkpoints.list(job.id)}
    epoch_ends = {c.step_number: c.metrics.full_valid_loss for c in checkpoints.values()
                  if c.metrics.full_valid_loss is not None}
    assert found["id"] in checkpoints and found["id"] == f"{job.fine_tuned_model}:ckpt-step-{found['step']}"
    assert found["valid_loss"] == pytest.approx(min(epoch_ends.values())) and found["step"] < max(epoch_ends)
    assert found["reason"].startswith(f"validation loss rose after epoch {found['epoch']}: use checkpoint "
                                      f"{found['epoch']}") and "early stopping ended training" in found["reason"]
    assert job.trained_tokens and max(epoch_ends) < EPOCHS * 10 // BATCH
    messages = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=1000).data]
    assert f"Recommended checkpoint: {found['id']}: {found['reason']}" in messages
    assert any(m.startswith("Early stopping: ") for m in messages)
    # the recommendation is a model: it answers like any other
    answer = client.chat.completions.create(model=found["id"], messages=[{"role": "user", "content": "Hi?"}],
                                            max_tokens=4)
    assert answer.model == found["id"]
    listed = next(j for j in client.fine_tuning.jobs.list().data if j.id == job.id)
    assert listed.recommended_checkpoint == found
    raw = json.loads(client.fine_tuning.jobs.with_raw_response.retrieve(job.id).text)
    assert raw["recommended_checkpoint"] == found and raw["early_stopping"] == {"patience": 1}
