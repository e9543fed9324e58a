"""`tunelab lab travel`: the cloud lab's steps, run through tunelab's public API with the `openai` SDK.

    tunelab lab travel                     # an embedded server; what `make demo` runs
    tunelab lab travel --base-url http://127.0.0.1:8000 --api-key …   # against a running `tunelab serve`

Upload the travel data, fine-tune SmolLM2-135M-Instruct (suffix ft-travel, default parameters), deploy the base
and the fine-tuned model (5K tokens per minute, Default content filter), ask the lab's questions to both with
the lab's system message, and run the comparison on the held-out prompt set. Then teach it what not to do: the
fine-tune answers the prompts set aside for mining (`mine.jsonl`) several times, each answer is scored by the
checks, a failing answer and a passing one to the same prompt make a preference pair, and a DPO fine-tune
continues from the supervised one on those pairs; the last comparison puts the base model, the supervised
fine-tune and the DPO fine-tune side by side on the held-out prompts. Each step says how long it took. The
comparisons add the travel assistant's own checks (`policy`, `redirect`) from the data folder's `checks.py`
through the checks seam (tunelab/evaluate/checks.py), as any outsider's check plugs in.
"""

from __future__ import annotations

import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from ..config import get_settings
from ..data.validate import MIN_EXAMPLES
from ..errors import InvalidRequest
from ..threads import reserve_cores
from .client import ApiKey, BaseUrl, _once, api_errors, client, deploy, jobs_wait, out
from .compare import compare, read_prompts

lab_app = typer.Typer(help="Walk through a lab end to end on this machine.", no_args_is_help=True)

BASE = "SmolLM2-135M-Instruct"


@contextmanager
def step(title: str):
    out.rule(f"[bold]{title}")
    started = time.monotonic()
    yield
    out.print(f"[dim]{title}: {time.monotonic() - started:.0f} s[/dim]", highlight=False)


@lab_app.command("travel")
def travel(
    data: Path = typer.Option(Path("examples/travel"), "--data", help="Folder with train.jsonl, valid.jsonl, "
                              "prompts.jsonl and system.txt (the system message)."),
    report_dir: Path = typer.Option(Path("reports"), "--out", help="Where the comparison's reports are written."),
    model: str = typer.Option(BASE, "--model", help="The base model to fine-tune."),
    checks: Optional[List[str]] = typer.Option(None, "--checks", help="Checks the comparison adds, as module:name "
                                               "or path/to/file.py:name (repeatable); default: policy and "
                                               "redirect of the --data folder's checks.py, when it has one."),
    dpo: bool = typer.Option(True, "--dpo/--no-dpo", help="After the comparison, mine preference pairs from the "
                             "fine-tune's answers to the --data folder's mine.jsonl and continue with DPO (when the "
                             "folder has a mine.jsonl)."),
    rounds: int = typer.Option(4, "--mine-rounds", min=1, max=16, help="How many answers (one per seed) the "
                               "fine-tune gives to each mining prompt."),
    beta: float = typer.Option(0.1, "--beta", min=0.001, max=2.0, help="DPO's beta: higher stays closer to the "
                               "supervised fine-tune."),
    base_url: BaseUrl = None, api_key: ApiKey = None,
) -> None:
    """The travel lab end to end: upload, fine-tune, deploy both models, ask the lab's questions side by side,
    compare on the held-out prompt set; then mine preference pairs, fine-tune with DPO and compare the three."""
    for name in ("train.jsonl", "valid.jsonl", "prompts.jsonl", "system.txt"):
        if not (data / name).is_file():
            raise InvalidRequest(f"{data / name}: no such file (run from the tunelab folder or pass --data)",
                                 param="--data")
    prompts = read_prompts(data / "prompts.jsonl")
    system = (data / "system.txt").read_text(encoding="utf-8").strip()
    started = time.monotonic()
    server = nullcontext((base_url, api_key))
    if base_url is None:
        reserve_cores()  # before the checks' imports bring in torch
        from ..evaluate.checks import load
        from .serve import embedded

        if not checks and (data / "checks.py").is_file():
            checks = [f"{data / 'checks.py'}:{name}" for name in ("policy", "redirect")]
        for spec in checks or ():
            load(spec, "--checks")  # a bad check fails now, not after the fine-tune
        settings = get_settings()
        # The embedded server runs the checks as if TUNELAB_CHECKS named them (files included), so the comparison
        # request need not. The lab runs its own comparison: the automatic one on the validation file is off.
        server = embedded(settings.model_copy(update={"auto_compare": False,
                                                      "checks": [*settings.checks, *(checks or ())]}))
        checks = None
    elif any(spec.rpartition(":")[0].endswith(".py") for spec in checks or ()):
        raise InvalidRequest("--checks: a running service loads check files named in its own TUNELAB_CHECKS "
                             "setting; with --base-url give module:name", param="--checks")
    with server as (url, key):
        if base_url is None:
            out.print(f"An embedded tunelab server answers at {url}/v1 for the length of the lab; follow it in the studio: {url}/?token={key}", highlight=False)
        api = client(url, key)
        with api_errors(url):
            with step("1. Upload the training and validation data"):
                files = {}
                for name in ("train.jsonl", "valid.jsonl"):
                    with (data / name).open("rb") as f:
                        files[name] = api.files.create(file=f, purpose="fine-tune").id
                    out.print(f"{name} → {files[name]}")
            with step(f"2. Fine-tune {model} (suffix ft-travel, default parameters)"):
                job = api.fine_tuning.jobs.create(model=model, training_file=files["train.jsonl"],
                                                  validation_file=files["valid.jsonl"], suffix="ft-travel", seed=42)
                out.print(f"Job {job.id}")
                jobs_wait(job.id, base_url=url, api_key=key)
                fine_tuned = api.fine_tuning.jobs.retrieve(job.id).fine_tuned_model
            with step("3. Deploy the base and the fine-tuned model (Standard, 5K tokens per minute, Default filter)"):
                for name, served in (("base-travel", model), ("ft-travel", fine_tuned)):
                    _replace_deployment(api, name)
                    deploy(served, name=name, tpm=5, content_filter="Default", engine="local", wait=True, base_url=url,
                           api_key=key, as_json=False)
            with step("4. Ask the lab's questions to both, with the lab's system message"):
                _side_by_side(api, [p for p in prompts if str(p.get("id", "")).startswith("lab-")], system)
            with step(f"5. Compare both on {len(prompts)} prompts ({data / 'prompts.jsonl'})"):
                # The models behind base-travel and ft-travel: an evaluation is not the app's traffic, so it is
                # not paced by the deployments' 5K-tokens-per-minute limit (through them it takes minutes more).
                out.print(f"base-travel serves {model}, ft-travel serves {fine_tuned}", highlight=False)
                compare([model, fine_tuned], prompts=data / "prompts.jsonl", system=system, seed=42,
                        temperature=0.7, max_tokens=256, parallel=8, validation=files["valid.jsonl"],
                        style=files["train.jsonl"], report_dir=report_dir, checks=checks, base_url=url,
                        api_key=key, as_json=False)
            mining = data / "mine.jsonl"
            if dpo and mining.is_file():
                _teach_what_not_to_do(api, url, key, model, fine_tuned, files, data, system, rounds, beta,
                                      report_dir, checks)
    out.print(f"[bold]The lab took {(time.monotonic() - started) / 60:.1f} minutes.[/bold] "
              f"Chat with the models: `tunelab serve`, then `tunelab chat ft-travel --system \"…\"`.",
              highlight=False)


def _teach_what_not_to_do(api, url: str, key: str, model: str, fine_tuned: str, files: dict, data: Path,
                          system: str, rounds: int, beta: float, report_dir: Path, checks) -> None:
    """Steps 6–8: mine preference pairs from the fine-tune's answers to the mining prompts, continue it with DPO on
    them, and compare the three models on the held-out prompts."""
    mine = read_prompts(data / "mine.jsonl")
    held_out = data / "prompts.jsonl"
    with step(f"6. Mine preference pairs: {rounds} answers of the fine-tune to each of {len(mine)} prompts "
              f"({data / 'mine.jsonl'})"):
        pairs = _mine_pairs(api, fine_tuned, mine, system, rounds, checks)
    if pairs is None:
        return
    if pairs["summary"]["pairs"] < MIN_EXAMPLES:
        out.print(f"[bold]{pairs['summary']['pairs']} preference pair(s)[/bold], fewer than the {MIN_EXAMPLES} a "
                  "fine-tune needs, so no DPO step: more mining prompts or --mine-rounds give more", highlight=False)
        return
    with step(f"7. Continue the fine-tune with DPO on {pairs['summary']['pairs']} pairs (beta {beta})"):
        job = api.fine_tuning.jobs.create(model=fine_tuned, training_file=pairs["file"]["id"], suffix="ft-travel-dpo",
                                          seed=42, method={"type": "dpo", "dpo": {"hyperparameters": {"beta": beta}}})
        out.print(f"Job {job.id}")
        jobs_wait(job.id, base_url=url, api_key=key)
        preferred = api.fine_tuning.jobs.retrieve(job.id).fine_tuned_model
    with step(f"8. Compare the base model, the fine-tune and the DPO fine-tune on the {len(read_prompts(held_out))} "
              "held-out prompts"):
        compare([model, fine_tuned, preferred], prompts=held_out, system=system, seed=42, temperature=0.7,
                max_tokens=256, parallel=8, validation=files["valid.jsonl"], style=files["train.jsonl"],
                report_dir=report_dir, checks=checks, base_url=url, api_key=key, as_json=False)


def _mine_pairs(api, model: str, prompts: list[dict], system: str, rounds: int, checks) -> dict | None:
    """`rounds` answers of `model` to each prompt (one comparison per seed, at a higher temperature for variety),
    turned into preference pairs by the checks and saved as a training file: the pairs API's answer, or None (said
    why) when no prompt had both a passing and a failing answer."""
    import openai
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    runs = []
    progress = Progress(TextColumn("[bold]Answering"), MofNCompleteColumn(), BarColumn(), TextColumn("answers"),
                        TimeElapsedColumn(), transient=True)
    with progress:
        task = progress.add_task("mine", total=rounds * len(prompts))
        for seed in range(1, rounds + 1):
            run = api.post("/evaluations", cast_to=object, options={"headers": _once()}, body={
                "candidates": [model], "prompts": prompts, "system": system, "seed": seed, "temperature": 1.0,
                "max_tokens": 256, "parallel": 8, "checks": checks or None})
            while run["status"] == "running":
                time.sleep(1)
                run = api.get(f"/evaluations/{run['id']}", cast_to=object)
                progress.update(task, completed=(seed - 1) * len(prompts) + run["progress"]["done"])
            if run["status"] == "failed":
                raise InvalidRequest(f"the mining comparison {run['id']} failed: {run['error']}")
            runs.append(run["id"])
    try:
        pairs = api.post("/pairs", cast_to=object, options={"headers": _once()},
                         body={"evaluations": runs, "save": True, "filename": "travel-pairs.jsonl"})
    except openai.BadRequestError as exc:  # no prompt had both a passing and a failing answer: nothing to learn
        message = (exc.body or {}).get("message", str(exc)) if isinstance(exc.body, dict) else str(exc)
        out.print(f"[bold]No preference pairs[/bold], so no DPO step: {message}", highlight=False)
        return None
    summary = pairs["summary"]
    out.print(f"{summary['pairs']} pairs from {summary['prompts_with_pair']} of {len(prompts)} prompts → "
              f"{pairs['file']['id']}", highlight=False)
    return pairs


def _replace_deployment(api, name: str) -> None:
    """A deployment left by an earlier run of the lab is replaced, not reused: it may serve an older model."""
    import openai

    try:
        api.delete(f"/deployments/{name}", cast_to=object)
        out.print(f"Replaced the earlier deployment {name}")
    except openai.NotFoundError:
        pass


def _side_by_side(api, questions: list[dict], system: str) -> None:
    """Each question to both deployments at once, as the playground's compare view does."""
    from concurrent.futures import ThreadPoolExecutor

    def ask(deployment: str, messages: list[dict]) -> str:
        response = api.with_options(max_retries=5).chat.completions.create(
            model=deployment, messages=messages, max_tokens=256, temperature=0.7, seed=42)
        choice = response.choices[0]
        return choice.message.content if choice.finish_reason != "content_filter" else "(filtered)"

    table = Table("question", "base-travel (base + system message)", "ft-travel (fine-tuned)", show_lines=True)
    asks = [(deployment, [{"role": "system", "content": system}, *prompt["messages"]])
            for prompt in questions for deployment in ("base-travel", "ft-travel")]
    with ThreadPoolExecutor(6) as pool:  # 3 questions at a time: within each deployment's requests per minute
        answers = list(pool.map(lambda a: ask(*a), asks))
    for i, prompt in enumerate(questions):
        table.add_row(prompt["messages"][-1]["content"], *answers[2 * i:2 * i + 2])
    out.print(table)

