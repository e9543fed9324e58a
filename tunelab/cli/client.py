"""The client commands: files, jobs and models through the service's HTTP API, with the `openai` SDK.

    tunelab files upload examples/travel/train.jsonl
    tunelab jobs create --train file-… --suffix ft-travel --wait
    tunelab jobs wait ftjob-…            # live progress bar: step, loss, ETA

They find the service through --base-url / TUNELAB_BASE_URL and send --api-key / TUNELAB_API_KEY.
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Column, Table

from ..config import get_settings
from ..errors import TunelabError

files_app = typer.Typer(help="Files on the service: upload training data, list, delete.", no_args_is_help=True)
jobs_app = typer.Typer(help="Fine-tuning jobs on the service: create, follow, cancel, pause, resume.",
                       no_args_is_help=True)

out = Console()
err = Console(stderr=True)

BaseUrl = Annotated[Optional[str], typer.Option("--base-url", help="The service [default: $TUNELAB_BASE_URL or "
                                                "http://127.0.0.1:8000].")]
ApiKey = Annotated[Optional[str], typer.Option("--api-key", help="API key [default: $TUNELAB_API_KEY].")]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON for programs.")]
FINAL = ("succeeded", "failed", "cancelled")


class ServiceUnreachable(TunelabError):
    code = "service_unreachable"


def client(base_url: str | None, api_key: str | None):
    from openai import OpenAI

    settings = get_settings()
    base = (base_url or settings.base_url).rstrip("/")
    return OpenAI(base_url=f"{base}/v1", api_key=api_key or settings.api_key or "no-key", max_retries=2, timeout=60)


@contextmanager
def api_errors(base_url: str | None = None):
    """The service's OpenAI-shaped errors become one readable line; so does a service that is not running."""
    import openai

    try:
        yield
    except openai.APITimeoutError:
        where = (base_url or get_settings().base_url).rstrip("/")
        raise ServiceUnreachable(f"the tunelab service at {where} did not answer in time; it may be busy — try "
                                 "again") from None
    except openai.APIConnectionError:
        where = (base_url or get_settings().base_url).rstrip("/")
        raise ServiceUnreachable(f"cannot reach the tunelab service at {where}; start it with `tunelab serve` "
                                 "(or point --base-url / TUNELAB_BASE_URL at it)") from None
    except openai.APIStatusError as exc:
        body = exc.body if isinstance(exc.body, dict) else {}
        message = body.get("message") or str(exc)
        if exc.status_code == 401:
            message += " (pass --api-key or set TUNELAB_API_KEY to the key `tunelab serve` printed)"
        raise TunelabError(message, param=body.get("param"), code=body.get("code")) from None


def _once() -> dict:
    """An Idempotency-Key for a create: if the SDK retries it (a timeout), the service returns the first one."""
    return {"Idempotency-Key": str(uuid.uuid4())}


def _print_json(obj) -> None:
    out.print_json(json.dumps(obj.model_dump() if hasattr(obj, "model_dump") else obj))


def _id_column(header: str, values) -> Column:
    """Ids are copied and pasted: never cut them short, let the other columns wrap instead."""
    return Column(header, no_wrap=True, min_width=max([len(header), *(len(v or "") for v in values)]))


def _when(ts: int | None) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S") if ts else "–"


# --- files ------------------------------------------------------------------------------------------------------

@files_app.command("upload")
def files_upload(path: Path = typer.Argument(..., help="A chat-format .jsonl file."),
                 purpose: str = typer.Option("fine-tune", "--purpose", help="What the file is for."),
                 base_url: BaseUrl = None, api_key: ApiKey = None, as_json: AsJson = False) -> None:
    """Upload a training or validation file."""
    if not path.is_file():
        raise TunelabError(f"{path}: no such file", param="file")
    with api_errors(base_url), path.open("rb") as f:
        uploaded = client(base_url, api_key).files.create(file=f, purpose=purpose, extra_headers=_once())
    if as_json:
        return _print_json(uploaded)
    out.print(f"Uploaded {path.name} as [bold]{uploaded.id}[/bold] ({uploaded.bytes:,} bytes)")


@files_app.command("list")
def files_list(base_url: BaseUrl = None, api_key: ApiKey = None, as_json: AsJson = False) -> None:
    """List files, newest first."""
    with api_errors(base_url):
        files = list(client(base_url, api_key).files.list())
    if as_json:
        return _print_json([f.model_dump() for f in files])
    table = Table(_id_column("id", [f.id for f in files]), _id_column("filename", [f.filename for f in files]),
                  "purpose", "bytes", "created")
    for f in files:
        table.add_row(f.id, f.filename, f.purpose, f"{f.bytes:,}", _when(f.created_at))
    out.print(table)


@files_app.command("delete")
def files_delete(file_id: str = typer.Argument(..., help="The file id (file-…)."),
                 base_url: BaseUrl = None, api_key: ApiKey = None) -> None:
    """Delete a file and its bytes (refused while an unfinished job uses it)."""
    with api_errors(base_url):
        client(base_url, api_key).files.delete(file_id)
    out.print(f"Deleted {file_id}")


# --- jobs -------------------------------------------------------------------------------------------------------

@jobs_app.command("create")
def jobs_create(
    train: str = typer.Option(..., "--train", help="Training file: an uploaded file id, or a .jsonl path to "
                              "upload first."),
    validation: Optional[str] = typer.Option(None, "--validation", help="Validation file: id or path."),
    model: Optional[str] = typer.Option(None, "--model", help="Base or fine-tuned model [default: "
                                        "SmolLM2-135M-Instruct]."),
    suffix: Optional[str] = typer.Option(None, "--suffix", help="Names the fine-tuned model."),
    epochs: str = typer.Option("auto", "--epochs", help="'auto' or 1–50."),
    batch_size: str = typer.Option("auto", "--batch-size", help="'auto' or 1–256."),
    learning_rate_multiplier: str = typer.Option("auto", "--learning-rate-multiplier", help="'auto' or a factor."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Fixes data order and initialisation."),
    dpo: bool = typer.Option(False, "--dpo", help="Preference fine-tuning (method dpo) on preference pairs."),
    beta: str = typer.Option("auto", "--beta", help="DPO's beta: 'auto' (0.1) or above 0 and at most 2."),
    wait: bool = typer.Option(False, "--wait", help="Follow the job until it finishes."),
    base_url: BaseUrl = None, api_key: ApiKey = None, as_json: AsJson = False,
) -> None:
    """Create a fine-tuning job (uploading local files first)."""
    api = client(base_url, api_key)
    with api_errors(base_url):
        training_file = _file_id(api, train, "train")
        validation_file = _file_id(api, validation, "validation") if validation else None
        hyperparameters = {"n_epochs": parse_auto(epochs, int), "batch_size": parse_auto(batch_size, int),
                           "learning_rate_multiplier": parse_auto(learning_rate_multiplier, float)}
        if beta != "auto" and not dpo:
            raise TunelabError("--beta applies to preference fine-tuning: add --dpo", param="beta")
        method = ({"type": "dpo", "dpo": {"hyperparameters": {**hyperparameters, "beta": parse_auto(beta, float)}}}
                  if dpo else {"type": "supervised", "supervised": {"hyperparameters": hyperparameters}})
        job = api.fine_tuning.jobs.create(
            model=model or get_settings().default_model, training_file=training_file,
            validation_file=validation_file, suffix=suffix, seed=seed, method=method, extra_headers=_once())
    if as_json and not wait:
        return _print_json(job)
    out.print(f"Created [bold]{job.id}[/bold] ({job.status})")
    if wait:
        jobs_wait(job.id, base_url, api_key)


def _file_id(api, value: str, flag: str) -> str:
    path = Path(value)
    if path.suffix == ".jsonl" or path.is_file():
        if not path.is_file():
            raise TunelabError(f"{value}: no such file", param=flag)
        with path.open("rb") as f:
            uploaded = api.files.create(file=f, purpose="fine-tune", extra_headers=_once())
        out.print(f"Uploaded {path.name} as {uploaded.id}")
        return uploaded.id
    return value


def parse_auto(value: str, kind):
    """'auto' stays 'auto'; anything else must parse as `kind` (the range is checked by whoever receives it)."""
    if value == "auto":
        return value
    try:
        return kind(value)
    except ValueError:
        return value  # pydantic (or the service) reports it, naming the field


@jobs_app.command("list")
def jobs_list(limit: int = typer.Option(20, "--limit", help="How many, newest first."),
              base_url: BaseUrl = None, api_key: ApiKey = None, as_json: AsJson = False) -> None:
    """List fine-tuning jobs, newest first."""
    with api_errors(base_url):
        jobs = client(base_url, api_key).fine_tuning.jobs.list(limit=limit).data
    if as_json:
        return _print_json([j.model_dump() for j in jobs])
    table = Table(_id_column("id", [j.id for j in jobs]), "status", "model", "suffix",
                  _id_column("fine-tuned model", [j.fine_tuned_model for j in jobs]), "created")
    for j in jobs:
        table.add_row(j.id, j.status, j.model, getattr(j, "user_provided_suffix", None) or "",
                      j.fine_tuned_model or "", _when(j.created_at))
    out.print(table)


@jobs_app.command("show")
def jobs_show(job_id: str = typer.Argument(..., help="The job id (ftjob-…)."),
              base_url: BaseUrl = None, api_key: ApiKey = None, as_json: AsJson = False) -> None:
    """Show a job: status, hyperparameters, tokens, result files, error."""
    with api_errors(base_url):
        job = client(base_url, api_key).fine_tuning.jobs.retrieve(job_id)
    if as_json:
        return _print_json(job)
    hp = job.hyperparameters
    rows = [("status", job.status), ("model", job.model), ("training file", job.training_file),
            ("validation file", job.validation_file or "–"),
            ("hyperparameters", f"epochs {hp.n_epochs}, batch size {hp.batch_size}, "
                                f"learning rate multiplier {hp.learning_rate_multiplier}"
                                + (f"; DPO, beta {job.method.dpo.hyperparameters.beta}"
                                   if job.method and job.method.type == "dpo" and job.method.dpo else "")),
            ("seed", str(job.seed)), ("created", _when(job.created_at)), ("finished", _when(job.finished_at)),
            ("trained tokens", f"{job.trained_tokens:,}" if job.trained_tokens else "–"),
            ("fine-tuned model", job.fine_tuned_model or "–"), ("result files", ", ".join(job.result_files) or "–")]
    if job.estimated_finish:
        rows.append(("estimated finish", _when(job.estimated_finish)))
    recommended = getattr(job, "recommended_checkpoint", None)  # tunelab's own field
    if recommended:
        rows.append(("recommended checkpoint", f"{recommended['id']}\n{recommended['reason']}"))
    if job.error and job.error.message:
        rows.append(("error", f"[red]{job.error.code}[/red]: {job.error.message}"))
    table = Table(show_header=False, box=None)
    for k, v in rows:
        table.add_row(f"[bold]{k}[/bold]", v)
    out.print(f"[bold]{job.id}[/bold]")
    out.print(table)


@jobs_app.command("events")
def jobs_events(job_id: str = typer.Argument(..., help="The job id (ftjob-…)."),
                limit: int = typer.Option(50, "--limit", help="How many, newest first."),
                base_url: BaseUrl = None, api_key: ApiKey = None, as_json: AsJson = False) -> None:
    """Show a job's events (newest first): lifecycle messages and per-step metrics."""
    with api_errors(base_url):
        events = client(base_url, api_key).fine_tuning.jobs.list_events(job_id, limit=limit).data
    if as_json:
        return _print_json([e.model_dump() for e in events])
    for e in events:
        style = {"warn": "yellow", "error": "red"}.get(e.level, "")
        line = f"{_when(e.created_at)}  {e.message}"
        out.print(f"[{style}]{line}[/{style}]" if style else line, highlight=False)


@jobs_app.command("checkpoints")
def jobs_checkpoints(job_id: str = typer.Argument(..., help="The job id (ftjob-…)."),
                     base_url: BaseUrl = None, api_key: ApiKey = None, as_json: AsJson = False) -> None:
    """Show a job's checkpoints with their metrics and model ids."""
    with api_errors(base_url):
        checkpoints = list(client(base_url, api_key).fine_tuning.jobs.checkpoints.list(job_id))
    if as_json:
        return _print_json([c.model_dump() for c in checkpoints])
    table = Table("step", "train loss", "valid loss", "full valid loss",
                  _id_column("model", [c.fine_tuned_model_checkpoint for c in checkpoints]))
    for c in checkpoints:
        m = c.metrics.model_dump() if c.metrics else {}
        table.add_row(str(c.step_number), *(f"{m[k]:.3f}" if m.get(k) is not None else "–"
                                            for k in ("train_loss", "valid_loss", "full_valid_loss")),
                      c.fine_tuned_model_checkpoint)
    out.print(table)


def _act(job_id: str, action: str, base_url, api_key) -> None:
    with api_errors(base_url):
        job = getattr(client(base_url, api_key).fine_tuning.jobs, action)(job_id)
    out.print(f"{job.id}: {job.status}")


@jobs_app.command("cancel")
def jobs_cancel(job_id: str = typer.Argument(..., help="The job id."), base_url: BaseUrl = None,
                api_key: ApiKey = None) -> None:
    """Cancel a job; a running one stops within seconds."""
    _act(job_id, "cancel", base_url, api_key)


@jobs_app.command("pause")
def jobs_pause(job_id: str = typer.Argument(..., help="The job id."), base_url: BaseUrl = None,
               api_key: ApiKey = None) -> None:
    """Pause a running job; it writes a deployable checkpoint."""
    _act(job_id, "pause", base_url, api_key)


@jobs_app.command("resume")
def jobs_resume(job_id: str = typer.Argument(..., help="The job id."), base_url: BaseUrl = None,
                api_key: ApiKey = None) -> None:
    """Resume a paused job from its checkpoint."""
    _act(job_id, "resume", base_url, api_key)


@jobs_app.command("wait")
def jobs_wait(job_id: str = typer.Argument(..., help="The job id."), base_url: BaseUrl = None,
              api_key: ApiKey = None) -> None:
    """Follow a job with a live progress bar (step, loss, ETA) until it finishes; exit 1 unless it succeeded."""
    api = client(base_url, api_key)
    seen: set[str] = set()
    progress = Progress(TextColumn("[bold]{task.fields[status]}"), MofNCompleteColumn(), BarColumn(),
                        TextColumn("loss {task.fields[loss]} · ETA {task.fields[eta]}"), TimeElapsedColumn(),
                        console=err, transient=False)
    task = progress.add_task("job", total=None, status="starting", loss="–", eta="–")
    with api_errors(base_url), progress:
        while True:
            job = api.fine_tuning.jobs.retrieve(job_id)
            events = [e for e in api.fine_tuning.jobs.list_events(job_id, limit=100).data if e.id not in seen]
            for e in reversed(events):
                seen.add(e.id)
                if e.type == "metrics" and e.data:
                    progress.update(task, total=e.data.get("total_steps"), completed=e.data.get("step"),
                                    loss=f"{e.data.get('train_loss', float('nan')):.3f}")
                elif e.type != "metrics":
                    progress.console.print(e.message, highlight=False)
            eta = "–"
            if job.estimated_finish:
                eta = f"{max(0, job.estimated_finish - int(time.time()))} s"
            progress.update(task, status=job.status, eta=eta)
            if job.status in FINAL or job.status == "paused":
                break
            time.sleep(1.0)
    if job.status == "succeeded":
        out.print(f"[green]Succeeded[/green]: {job.fine_tuned_model} ({job.trained_tokens:,} trained tokens)")
        return
    if job.error and job.error.message:
        err.print(f"[red]{job.status}[/red]: {job.error.message}", highlight=False)
    else:
        err.print(f"{job.id} is {job.status}")
    raise typer.Exit(1)


# --- models (the `tunelab models` group lives in main.py beside `models import`) ---------------------------------

def list_service_models(base_url: str | None, api_key: str | None) -> list[dict]:
    with api_errors(base_url):
        return [m.model_dump() for m in client(base_url, api_key).models.list().data]


def delete_service_model(model_id: str, base_url: str | None, api_key: str | None) -> None:
    with api_errors(base_url):
        client(base_url, api_key).models.delete(model_id)


# --- deployments and chat ---------------------------------------------------------------------------------------

deployments_app = typer.Typer(help="Deployments on the service: list, show, delete (create one with `tunelab "
                              "deploy`).", no_args_is_help=True)


def deploy(
    model: str = typer.Argument(..., help="A model id: base, ft:…, or ft:…:ckpt-step-N."),
    name: str = typer.Option(..., "--name", help="The deployment name clients use as `model`."),
    tpm: int = typer.Option(5, "--tpm", help="Tokens-per-minute limit in thousands (6 requests/min each)."),
    content_filter: str = typer.Option("Default", "--content-filter", help="Content filter policy: Default, "
                                       "None or a custom policy."),
    engine: str = typer.Option("local", "--engine", help="What decodes: local (in the service), llama.cpp or "
                               "vllm (a server the service starts and watches), or the URL of an engine already "
                               "running (http://host:port)."),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="Wait until the deployment has Succeeded."),
    base_url: BaseUrl = None, api_key: ApiKey = None, as_json: AsJson = False,
) -> None:
    """Deploy a model as a named endpoint (type Standard) with a token-rate limit and a content filter."""
    api = client(base_url, api_key)
    body = {"sku": {"name": "Standard", "capacity": tpm},
            "properties": {"model": {"format": "OpenAI", "name": model}, "raiPolicyName": content_filter,
                           "engine": {"type": "url", "url": engine} if "://" in engine else {"type": engine}}}
    with api_errors(base_url):
        created = api.put(f"/deployments/{name}", body=body, cast_to=object)
        if wait:
            with err.status(f"Provisioning {name} ({model})…"):
                while created["properties"]["provisioningState"] == "Creating":
                    time.sleep(0.5)
                    created = api.get(f"/deployments/{name}", cast_to=object)
    if as_json:
        return _print_json(created)
    state = created["properties"]["provisioningState"]
    if state == "Failed":
        err.print(f"[red]Failed[/red]: {created['properties']['error']}", highlight=False)
        raise typer.Exit(1)
    shown = created["properties"].get("engine") or {}
    on = f", on {shown.get('kind') or shown['type']} (pid {shown['pid']}, port {shown['port']})" if shown.get("pid") \
        else (f", on {shown['url']}" if shown.get("url") else "")
    out.print(f"{name}: {state} ({model}, {tpm}K tokens per minute, content filter {content_filter}{on})",
              soft_wrap=True)


@deployments_app.command("list")
def deployments_list(base_url: BaseUrl = None, api_key: ApiKey = None, as_json: AsJson = False) -> None:
    """List deployments with their model, limit and provisioning state."""
    with api_errors(base_url):
        found = client(base_url, api_key).get("/deployments", cast_to=object)["value"]
    if as_json:
        return _print_json(found)
    # The short columns never squeeze; on a narrow terminal the model id folds (--json gives it whole).
    table = Table(_id_column("name", [d["name"] for d in found]), Column("state", no_wrap=True, min_width=9),
                  Column("TPM", no_wrap=True, min_width=4), Column("filter", no_wrap=True, min_width=7),
                  Column("engine", no_wrap=True, min_width=6), Column("model", overflow="fold"))
    for d in found:
        engine = d["properties"].get("engine") or {}
        table.add_row(d["name"], d["properties"]["provisioningState"], f"{d['sku']['capacity']}K",
                      d["properties"]["raiPolicyName"], engine.get("url") or engine.get("type", "local"),
                      d["properties"]["model"]["name"])
    out.print(table)


@deployments_app.command("show")
def deployments_show(name: str = typer.Argument(..., help="The deployment name."),
                     base_url: BaseUrl = None, api_key: ApiKey = None) -> None:
    """Show a deployment in Azure's shape."""
    with api_errors(base_url):
        _print_json(client(base_url, api_key).get(f"/deployments/{name}", cast_to=object))


@deployments_app.command("delete")
def deployments_delete(name: str = typer.Argument(..., help="The deployment name."),
                       base_url: BaseUrl = None, api_key: ApiKey = None) -> None:
    """Delete a deployment (its adapter is freed)."""
    with api_errors(base_url):
        client(base_url, api_key).delete(f"/deployments/{name}", cast_to=object)
    out.print(f"Deleted {name}")


def chat(
    deployment: str = typer.Argument(..., help="A deployment name (or any model id)."),
    system: Optional[str] = typer.Option(None, "--system", help="The system message."),
    max_tokens: int = typer.Option(256, "--max-tokens", help="Longest answer, in tokens."),
    temperature: float = typer.Option(0.7, "--temperature", help="0 answers greedily; higher varies more."),
    base_url: BaseUrl = None, api_key: ApiKey = None,
) -> None:
    """Chat in the terminal with streaming, like the playground: /system TEXT sets the system message, /clear
    clears the chat, /exit (or Ctrl-D) leaves."""
    api = client(base_url, api_key)
    history: list[dict] = []
    err.print(f"Chatting with [bold]{deployment}[/bold]. /system TEXT · /clear · /exit", highlight=False)
    while True:
        try:
            line = input("you> ")
        except EOFError:
            break
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            break
        if text == "/clear":
            history.clear()
            err.print("(chat cleared)")
            continue
        if text.startswith("/system"):
            system = text[len("/system"):].strip() or None
            history.clear()
            err.print(f"(system message {'set' if system else 'removed'}; chat cleared)")
            continue
        history.append({"role": "user", "content": text})
        messages = ([{"role": "system", "content": system}] if system else []) + history
        answer, started, first = "", time.monotonic(), None
        with api_errors(base_url):
            chunks = api.chat.completions.create(model=deployment, messages=messages, max_tokens=max_tokens,
                                                 temperature=temperature, stream=True,
                                                 stream_options={"include_usage": True})
            # Plain writes, not rich: the terminal wraps the text as it streams, rich would re-wrap each piece.
            sys.stdout.write(f"{deployment}> ")
            usage = None
            for chunk in chunks:
                if chunk.usage:
                    usage = chunk.usage
                for choice in chunk.choices:
                    if choice.delta.content:
                        first = first or time.monotonic()
                        answer += choice.delta.content
                        sys.stdout.write(choice.delta.content)
                        sys.stdout.flush()
                    if choice.finish_reason == "content_filter":
                        sys.stdout.write(" [filtered by the content filter]")
        sys.stdout.write("\n")
        sys.stdout.flush()
        history.append({"role": "assistant", "content": answer})
        if usage:
            ttft = f", first token {first - started:.2f} s" if first else ""
            err.print(f"[dim]({usage.completion_tokens} tokens in {time.monotonic() - started:.1f} s{ttft})[/dim]")
