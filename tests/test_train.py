"""The training recipe on a tiny random llama: it learns, touches only LoRA weights, resumes exactly, saves right."""

from __future__ import annotations

import csv
import json
import threading

import pytest
import torch
from safetensors.torch import load_file

from tunelab.data.samples import load_samples
from tunelab.errors import InvalidRequest
from tunelab.models.catalog import resolve_model
from tunelab.models.load import load_causal_lm, load_tokenizer
from tunelab.train import checkpoints
from tunelab.train.config import parse_config, resolve
from tunelab.train.metrics import COLUMNS
from tunelab.train.recipe import epoch_order, run, setup_model, train_step
from conftest import TRAVEL, write_jsonl


class Recorder:
    """A reporter that keeps what it is told and can ask the run to stop after a given step."""

    def __init__(self, stop_after: int | None = None, stop: threading.Event | None = None):
        self.steps, self.messages, self.checkpoints = [], [], []
        self.stop_after, self.stop = stop_after, stop

    def start(self, hyperparameters, total_steps, first_step):
        self.hyperparameters = hyperparameters

    def step(self, metrics):
        self.steps.append(metrics)
        if self.stop_after == metrics.step:
            self.stop.set()

    def message(self, text):
        self.messages.append(text)

    def checkpoint(self, step, path, metrics):
        self.checkpoints.append(step)

    def finish(self):
        pass


@pytest.fixture
def data(tmp_path):
    lines = (TRAVEL / "train.jsonl").read_text().splitlines()
    train = tmp_path / "train.jsonl"
    valid = tmp_path / "valid.jsonl"
    train.write_text("\n".join(lines[:12]) + "\n")
    valid.write_text("\n".join((TRAVEL / "valid.jsonl").read_text().splitlines()[:10]) + "\n")
    return train, valid


def config(tiny_model, data, out, **overrides):
    train, valid = data
    values = dict(model=str(tiny_model), train_file=train, validation_file=valid, n_epochs=3, batch_size=4,
                  learning_rate_multiplier=10.0, seed=3, out=out)
    return parse_config(**{**values, **overrides})


def read_csv(path):
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_loss_falls_lora_changes_and_base_weights_stay_identical(tiny_model, data, precision):
    hp = resolve(config(tiny_model, data, None, precision=precision), 12, 0)
    assert hp.matmul_precision == precision
    torch.manual_seed(hp.seed)
    model, lean = setup_model(resolve_model(str(tiny_model)), hp)
    products = torch.float32 if precision == "fp32" else torch.bfloat16
    fused = {weight.dtype for layer in lean.layers for weight, _, _ in layer.values()}
    assert fused == {products} and model.get_base_model().lm_head.weight.dtype == products
    assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.float32}  # what trains stays fp32
    base_before = {k: v.clone() for k, v in model.named_parameters() if "lora_" not in k}
    lora_before = {k: v.clone() for k, v in model.named_parameters() if "lora_" in k}
    samples = load_samples(data[0], load_tokenizer(tiny_model), 1024)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    losses = [train_step(model, lean, samples[:4], optimizer, scheduler)[0] for _ in range(20)]

    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0] * 0.9
    after = dict(model.named_parameters())
    assert all(torch.equal(after[k], v) for k, v in base_before.items())
    lora_b = [k for k in lora_before if "lora_B" in k]
    assert lora_b and all(not torch.equal(after[k], lora_before[k]) for k in lora_b)


def test_trainable_parameters_equal_the_rank_formula(tiny_model, data):
    rank = 4
    hp = resolve(config(tiny_model, data, None, lora_rank=rank), 12, 0)
    base = load_causal_lm(tiny_model)
    expected = sum(rank * (m.in_features + m.out_features) for name, m in base.named_modules()
                   if isinstance(m, torch.nn.Linear) and name != "lm_head")
    model, _ = setup_model(resolve_model(str(tiny_model)), hp)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == expected


def test_run_writes_adapter_metrics_config_and_manifest(tiny_model, data, tmp_path):
    from peft import PeftModel

    out = tmp_path / "run"
    reporter = Recorder()
    result = run(config(tiny_model, data, out), reporter)

    assert not result.stopped_early and result.steps == 9
    assert sorted(p.name for p in out.iterdir()) == ["adapter", "checkpoints", "config.json", "manifest.json",
                                                     "results.csv"]
    rows = read_csv(out / "results.csv")
    assert list(rows[0]) == COLUMNS and [int(r["step"]) for r in rows] == list(range(1, 10))
    assert all(rows[i]["full_valid_loss"] for i in (2, 5, 8)) and not rows[0]["full_valid_loss"]
    assert sum(1 for r in rows if r["valid_loss"]) >= 3
    assert reporter.checkpoints == [3, 6, 9]
    assert [p.name for p in checkpoints.complete_checkpoints(out / "checkpoints")] == \
        ["step-000003", "step-000006", "step-000009"]

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["seed"] == 3 and manifest["chat_template"] == load_tokenizer(tiny_model).chat_template
    assert len(manifest["training_file"]["sha256"]) == 64 and "torch" in manifest["libraries"]
    saved = json.loads((out / "config.json").read_text())
    assert saved["hyperparameters"]["n_epochs"] == 3 and saved["config"]["n_epochs"] == 3

    peft_model = PeftModel.from_pretrained(load_causal_lm(tiny_model), out / "adapter")
    adapter = load_file(out / "adapter" / "adapter_model.safetensors")
    loaded = {k: v for k, v in peft_model.state_dict().items() if "lora_" in k}
    assert len(loaded) == len(adapter) > 0
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(out / "adapter").chat_template == manifest["chat_template"]  # serving renders with the template training used


def test_same_seed_gives_the_same_loss_curve(tiny_model, data, tmp_path):
    run(config(tiny_model, data, tmp_path / "a"), Recorder())
    run(config(tiny_model, data, tmp_path / "b"), Recorder())
    assert read_csv(tmp_path / "a" / "results.csv") == read_csv(tmp_path / "b" / "results.csv")


@pytest.mark.parametrize("stop_after", [2, 3, 5, 8])  # mid-epoch 0, epoch boundary, mid-epoch 1 and 2
def test_resume_equals_an_uninterrupted_run(tiny_model, data, tmp_path, stop_after):
    whole = tmp_path / "whole"
    run(config(tiny_model, data, whole), Recorder())

    parts = tmp_path / "parts"
    stop = threading.Event()
    first = run(config(tiny_model, data, parts), Recorder(stop_after, stop), stop=stop)
    assert first.stopped_early and first.steps == stop_after
    assert not (parts / "adapter").exists()
    second = Recorder()
    run(config(tiny_model, data, parts), second, resume=True)
    assert [m.step for m in second.steps][0] == stop_after + 1

    assert read_csv(whole / "results.csv") == read_csv(parts / "results.csv")
    a = load_file(whole / "adapter" / "adapter_model.safetensors")
    b = load_file(parts / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_skips_a_damaged_checkpoint_and_cleans_partial_saves(tiny_model, data, tmp_path):
    out = tmp_path / "run"
    stop = threading.Event()
    run(config(tiny_model, data, out, n_epochs=2), Recorder(5, stop), stop=stop)  # checkpoints at 3 and 5
    root = out / "checkpoints"
    latest = root / "step-000005"
    weights = latest / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\x00" * 8)  # flip the last bytes
    (root / ".tmp-step-000006-x").mkdir()  # what a crash mid-save leaves behind
    assert checkpoints.latest_checkpoint(root).name == "step-000003"

    reporter = Recorder()
    run(config(tiny_model, data, out, n_epochs=2), reporter, resume=True)
    assert reporter.steps[0].step == 4
    assert not list(root.glob(".tmp-*"))


def test_epoch_order_is_a_fixed_permutation_per_epoch(tiny_model, data):
    hp = resolve(config(tiny_model, data, None), 12, 0)
    orders = [epoch_order(12, hp, e) for e in range(3)]
    assert orders[0] == epoch_order(12, hp, 0) and orders[0] != orders[1]
    assert all(sorted(i for batch in o for i in batch) == list(range(12)) for o in orders)


def test_invalid_settings_name_every_flag(tiny_model, data):
    with pytest.raises(InvalidRequest) as caught:
        config(tiny_model, data, None, n_epochs=0, batch_size=1000, learning_rate_multiplier=-1, suffix="a b")
    message = caught.value.message
    for flag in ("--epochs", "--batch-size", "--learning-rate-multiplier", "--suffix"):
        assert flag in message


def test_an_existing_run_is_not_overwritten(tiny_model, data, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "results.csv").write_text("keep me")
    with pytest.raises(InvalidRequest, match="--resume"):
        run(config(tiny_model, data, out), Recorder())
    assert (out / "results.csv").read_text() == "keep me"


def test_bad_training_data_fails_before_any_step(tiny_model, tmp_path):
    bad = write_jsonl(tmp_path / "bad.jsonl", ['{"messages": [}'] * 12)
    reporter = Recorder()
    with pytest.raises(Exception) as caught:
        run(parse_config(model=str(tiny_model), train_file=bad, out=tmp_path / "run"), reporter)
    assert "line 1" in caught.value.message and caught.value.param == "training_file"
    assert reporter.steps == [] and not (tmp_path / "run").exists()


def test_examples_over_the_context_are_truncated_and_reported(tiny_model, data, tmp_path):
    reporter = Recorder()
    run(config(tiny_model, data, tmp_path / "run", n_epochs=1, max_seq_len=200), reporter)
    (message,) = [m for m in reporter.messages if "training example" in m]
    assert message.startswith("12 training example(s) longer than 200 tokens were truncated (lines 1, 2, 3")


def test_full_fine_tuning_trains_every_weight_and_resumes_exactly(tiny_model, data, tmp_path):
    from safetensors.torch import load_file as load

    whole = tmp_path / "whole"
    result = run(config(tiny_model, data, whole, method="full", n_epochs=2, learning_rate_multiplier=1.0), Recorder())
    assert result.weights == whole / "model" and (whole / "model" / "config.json").is_file()
    trained = load(whole / "model" / "model.safetensors")
    original = load(tiny_model / "model.safetensors")
    assert trained.keys() == original.keys()
    assert all(not torch.equal(trained[k], original[k]) for k in trained if k.endswith("proj.weight"))

    parts = tmp_path / "parts"
    stop = threading.Event()
    run(config(tiny_model, data, parts, method="full", n_epochs=2, learning_rate_multiplier=1.0),
        Recorder(4, stop), stop=stop)
    run(config(tiny_model, data, parts, method="full", n_epochs=2, learning_rate_multiplier=1.0), Recorder(),
        resume=True)
    resumed = load(parts / "model" / "model.safetensors")
    assert all(torch.equal(trained[k], resumed[k]) for k in trained)
    assert read_csv(whole / "results.csv") == read_csv(parts / "results.csv")


def random_lora_model(tiny_model, data):
    """The tiny model with LoRA in fp32 (identities hold up to fp32 rounding) and random non-zero LoRA weights,
    so every LoRA weight gets a gradient; and its lean forward."""
    hp = resolve(config(tiny_model, data, None, precision="fp32"), 12, 0)
    torch.manual_seed(0)
    model, lean = setup_model(resolve_model(str(tiny_model)), hp)
    for p in model.parameters():
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.05)
    return model, lean


def losses_and_gradients(model, lean, batch, share: bool) -> tuple[list, dict]:
    """Each sample's (loss, correct) and the LoRA gradients of the whole batch, with or without sharing the
    batch's prefix, as `train_step` computes them."""
    from tunelab.train.prefix import compute_prefix
    from tunelab.train.recipe import loss_step

    model.zero_grad(set_to_none=True)
    prefix = compute_prefix(model, lean, batch) if share else None
    losses = []
    for sample in batch:
        loss, correct = loss_step(model, lean, [sample], prefix)
        loss.backward()
        losses.append((loss.item(), correct))
    if prefix:
        prefix.backward()
    return losses, {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("forward", ["lean", "transformers"])
def test_shared_prefix_gives_the_same_gradients_as_full_conversations(tiny_model, data, forward):
    from tunelab.train.prefix import shared_length

    model, lean = random_lora_model(tiny_model, data)
    assert lean is not None  # a Llama
    if forward == "transformers":
        lean = None
    batch = load_samples(data[0], load_tokenizer(tiny_model), 1024)[:4]
    assert shared_length(batch) > 50  # the travel system message

    plain_losses, plain = losses_and_gradients(model, lean, batch, share=False)
    shared_losses, shared = losses_and_gradients(model, lean, batch, share=True)
    assert [loss for loss, _ in shared_losses] == pytest.approx([loss for loss, _ in plain_losses], rel=1e-5)
    assert plain.keys() == shared.keys()
    for name in plain:
        scale = plain[name].abs().max()
        assert (plain[name] - shared[name]).abs().max() <= 1e-4 * scale, (name, (plain[name] - shared[name]).abs().max(), scale)


def test_the_lean_forward_computes_what_transformers_and_peft_compute(tiny_model, data):
    """Loss and every LoRA gradient, with and without a shared prefix, through train/lean_forward.py and through
    transformers + PEFT (fp32)."""
    model, lean = random_lora_model(tiny_model, data)
    batch = load_samples(data[0], load_tokenizer(tiny_model), 1024)[:3]

    def run(forward, share: bool):
        return losses_and_gradients(model, forward, batch, share)

    for share in (False, True):
        (ours, our_grads), (theirs, their_grads) = run(lean, share), run(None, share)
        assert [c for _, c in ours] == [c for _, c in theirs]
        assert [l for l, _ in ours] == pytest.approx([l for l, _ in theirs], rel=1e-5)
        for name, grad in their_grads.items():
            assert (our_grads[name] - grad).abs().max() <= 1e-4 * grad.abs().max(), name


@pytest.mark.parametrize("share", [False, True])
def test_a_packed_batch_computes_what_its_conversations_compute_one_by_one(tiny_model, data, share):
    """The lean forward packs a batch's conversations into one pass; loss, accuracy and every LoRA gradient
    are those of the conversations run one at a time (fp32), with and without a shared prefix."""
    from tunelab.train.prefix import compute_prefix
    from tunelab.train.recipe import loss_step

    model, lean = random_lora_model(tiny_model, data)
    batch = load_samples(data[0], load_tokenizer(tiny_model), 1024)[:4]
    assert len({s.length for s in batch}) > 1  # conversations of different lengths

    one_by_one, packed_grads = losses_and_gradients(model, lean, batch, share)
    model.zero_grad(set_to_none=True)
    prefix = compute_prefix(model, lean, batch) if share else None
    loss, correct = loss_step(model, lean, batch, prefix)
    loss.backward()
    if prefix:
        prefix.backward()
    assert loss.item() == pytest.approx(sum(l for l, _ in one_by_one), rel=1e-5)
    assert correct == sum(c for _, c in one_by_one)
    for name, param in model.named_parameters():
        if param.requires_grad:
            grad = packed_grads[name]
            assert (param.grad - grad).abs().max() <= 1e-4 * grad.abs().max(), name


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("softcap", [None, 30.0])
def test_the_chunked_head_loss_is_cross_entropy_and_its_gradient(precision, softcap):
    from torch.nn import functional as F

    from tunelab.train import loss as head
    from tunelab.train.precision import Bf16Linear

    torch.manual_seed(0)
    linear = torch.nn.Linear(32, 1000, bias=False).requires_grad_(False)
    layer = Bf16Linear(linear) if precision == "bf16" else linear
    n = 3 * head.CHUNK_ROWS + 5  # several chunks and a short last one
    hidden = torch.randn(n, 32, requires_grad=True)
    targets = torch.randint(0, 1000, (n,))
    with torch.no_grad():  # half the rows predict their target best
        targets[::2] = layer(hidden[::2]).float().argmax(-1)

    loss, correct = head.head_loss(layer, hidden, targets, softcap)
    (2 * loss).backward()
    ours = hidden.grad.clone()
    hidden.grad = None
    logits = layer(hidden).float()
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    expected = F.cross_entropy(logits, targets, reduction="sum")
    (2 * expected).backward()

    assert correct == int((logits.argmax(-1) == targets).sum()) >= n // 2
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    tolerance = 1e-5 if precision == "fp32" else 2e-2  # bf16 rounds the gradient's product, as the plain path does
    assert (ours - hidden.grad).abs().max() <= tolerance * hidden.grad.abs().max()
    with torch.no_grad():  # evaluation: the same loss, no gradient kept
        assert head.head_loss(layer, hidden, targets, softcap)[0].item() == pytest.approx(expected.item(), rel=1e-5)


def test_packs_keep_the_order_and_stay_within_their_token_budget():
    from types import SimpleNamespace

    from tunelab.train.recipe import _packs

    samples = [SimpleNamespace(length=n) for n in (300, 500, 900, 2500, 100, 100)]
    packs = _packs(samples, 1000)
    assert [[s.length for s in p] for p in packs] == [[300, 500], [900], [2500], [100, 100]]
    assert [s for p in packs for s in p] == samples
    assert all(len(p) == 1 for p in _packs(samples, 0))  # transformers' forward: one conversation at a time
