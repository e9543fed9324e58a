"""Fine-tune through tunelab's OpenAI-compatible API with nothing but the `openai` SDK.

    tunelab serve                                   # in another terminal; it prints an API key once
    export TUNELAB_API_KEY=tl-…                     # the key it printed
    python examples/quickstart_api.py               # the travel data, default parameters (~11 min on 2 cores)
    python examples/quickstart_api.py 1             # the same with 1 epoch

The same code works against the cloud: only `base_url`, the key and the model name differ.
"""

import os
import sys
import time
from pathlib import Path

from openai import OpenAI

base_url = os.environ.get("TUNELAB_BASE_URL", "http://127.0.0.1:8000").rstrip("/") + "/v1"
client = OpenAI(base_url=base_url, api_key=os.environ["TUNELAB_API_KEY"])
travel = Path(__file__).parent / "travel"

# 1. Upload the training and validation data.
with open(travel / "train.jsonl", "rb") as f:
    training = client.files.create(file=f, purpose="fine-tune")
with open(travel / "valid.jsonl", "rb") as f:
    validation = client.files.create(file=f, purpose="fine-tune")
print(f"uploaded {training.filename} as {training.id}, {validation.filename} as {validation.id}")

# 2. Create the fine-tuning job.
hyperparameters = {"n_epochs": int(sys.argv[1])} if len(sys.argv) > 1 else {}
job = client.fine_tuning.jobs.create(model="SmolLM2-135M-Instruct", training_file=training.id,
                                     validation_file=validation.id, suffix="ft-travel",
                                     method={"type": "supervised",
                                             "supervised": {"hyperparameters": hyperparameters}})
print(f"created {job.id}")

# 3. Wait for it, showing the latest step.
while job.status not in ("succeeded", "failed", "cancelled"):
    time.sleep(10)
    job = client.fine_tuning.jobs.retrieve(job.id)
    latest = client.fine_tuning.jobs.list_events(job.id, limit=1).data
    print(f"{job.status:>16}  {latest[0].message if latest else ''}")

# 4. The events, oldest first (metrics events carry each step's numbers in `data`).
print("\nevents:")
for event in reversed(list(client.fine_tuning.jobs.list_events(job.id, limit=1000))):
    if event.type == "message" or event.data.get("full_valid_loss") is not None:
        print(f"  [{event.level}] {event.message}")

# 5. The checkpoints, one per epoch, each a model id you can deploy.
print("\ncheckpoints:")
for checkpoint in client.fine_tuning.jobs.checkpoints.list(job.id):
    m = checkpoint.metrics
    print(f"  step {checkpoint.step_number:>4}: train loss {m.train_loss:.3f}, "
          f"full validation loss {m.full_valid_loss:.3f}  {checkpoint.fine_tuned_model_checkpoint}")

if job.status != "succeeded":
    sys.exit(f"\nthe job {job.status}: {job.error.message if job.error else ''}")
print(f"\nfine-tuned model: {job.fine_tuned_model} ({job.trained_tokens:,} trained tokens, "
      f"hyperparameters {job.hyperparameters.model_dump()})")
