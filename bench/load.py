"""Load on one rate-limited deployment: many concurrent streaming clients through the stock `openai` SDK.

    .venv/bin/python bench/load.py                          # 50 clients, 125 s, capacity 20 (20,000 tokens/min)
    .venv/bin/python bench/load.py --clients 10 --duration 12 --capacity 10 --request-tokens 500
    .venv/bin/python bench/load.py --base-url http://127.0.0.1:8000/v1 --deployment mine   # a service you run

Without `--base-url` it starts `tunelab serve` in its own process on a private TUNELAB_HOME with a tiny random
llama (the one the tests build from a config: the limiter is measured, not the model) and deploys it with the
content filter off. Each client loops: a streamed chat completion (`AsyncOpenAI`, `max_retries=0`, so nothing is
retried behind our back); on a 429 it waits what `retry-after-ms` says, plus a little jitter, and asks again.

Reported: tokens admitted in every 60-second window of the run (by the time each request was admitted, the way the
limiter counts them; a run shorter than a minute is one window), against the limit; server errors; how each
stream ended — completed, refused with a 429 before its first byte, or broken after bytes; the server's resident
memory at start, peak and end. The run fails (exit 1) when admitted tokens are off the limit by more than 5% in any
full window, on any server error, any stream broken after its first byte, or memory that keeps growing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

WINDOW = 60.0  # the limiter's token window
TOLERANCE = 0.05
PROMPT = "Tell me everything about a long walk through an old city, street by street."


@dataclass
class Outcome:
    """One request: when it was sent and answered, how it ended, and the tokens it was charged."""

    sent: float
    answered: float = 0.0
    kind: str = ""  # completed | refused (429 before any byte) | broken (error after bytes) | failed (other)
    tokens: int = 0
    chunks: int = 0
    status: int | None = None
    detail: str = ""
    remaining: int | None = None  # x-ratelimit-remaining-tokens: the server's own count once it admitted this


@dataclass
class Report:
    limit: int
    duration: float
    clients: int
    outcomes: list[Outcome]
    rss_kib: list[tuple[float, int]] = field(default_factory=list)

    def admitted(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.kind in ("completed", "broken")]

    def minutes(self) -> list[int]:
        """Tokens admitted in each whole minute of the run, counted from the first admission (by the time each
        request was admitted, as the limiter counts it); a run shorter than a minute is one window."""
        admitted = sorted((o.answered, o.tokens) for o in self.admitted())
        if not admitted:
            return []
        first = admitted[0][0]
        if self.duration < WINDOW:
            return [sum(t for _, t in admitted)]
        return [sum(t for at, t in admitted if first + k * WINDOW <= at < first + (k + 1) * WINDOW)
                for k in range(int((self.duration - first) // WINDOW))]

    def sliding(self, step: float = 0.01) -> tuple[int, int, float]:
        """Over every 60-second window inside the run (starts `step` apart): the most tokens surely admitted in
        it and the fewest possibly admitted in it, and the share of windows below the limit less 5%.

        The server admitted each request between the moment it was sent and the moment its answer began; only
        a request whose whole span lies in a window surely counts there, and one whose span touches it possibly
        does, so a client's lag under load is not mistaken for the limiter's. A burst of admissions expires all
        at once a minute later and is admitted again only when the refused clients come back, so a window ending
        in between sees the burst missing for that moment."""
        admitted = [(o.sent, o.answered, o.tokens) for o in self.admitted()]
        if not admitted or self.duration < WINDOW:
            whole = (self.minutes() or [0])[0]
            return whole, whole, 0.0
        most, fewest, low, count = 0, None, 0, 0
        start = min(answered for _, answered, _ in admitted)
        while start + WINDOW <= self.duration:
            end = start + WINDOW
            surely = sum(t for sent, answered, t in admitted if start <= sent and answered < end)
            possibly = sum(t for sent, answered, t in admitted if answered >= start and sent < end)
            most, fewest = max(most, surely), possibly if fewest is None else min(fewest, possibly)
            low += possibly < (1 - TOLERANCE) * self.limit
            count += 1
            start += step
        return most, fewest or 0, low / max(count, 1)

    def refused_in(self, minute: int) -> int:
        """429s in whole minute `minute` (from the first admission; the whole run when under a minute)."""
        first = min((o.answered for o in self.admitted()), default=0.0)
        if self.duration < WINDOW:
            return sum(1 for o in self.outcomes if o.kind == "refused")
        return sum(1 for o in self.outcomes if o.kind == "refused"
                   and first + minute * WINDOW <= o.sent < first + (minute + 1) * WINDOW)

    def least_remaining(self) -> int:
        """The fewest tokens the server said were left in its minute right after admitting a request (by its own
        clock, which the clients' timestamps only approximate): how close to the limit admission went."""
        return min((o.remaining for o in self.admitted() if o.remaining is not None), default=0)

    def counts(self) -> dict[str, int]:
        out = {"completed": 0, "refused": 0, "broken": 0, "failed": 0}
        for o in self.outcomes:
            out[o.kind] += 1
        return out

    def server_errors(self) -> int:
        return sum(1 for o in self.outcomes if o.kind in ("broken", "failed") or (o.status or 0) >= 500)

    def memory(self) -> dict[str, float]:
        values = [kib for _, kib in self.rss_kib]
        if not values:
            return {}
        half = len(values) // 2
        return {"start_mib": values[0] / 1024, "peak_mib": max(values) / 1024, "end_mib": values[-1] / 1024,
                "peak_first_half_mib": max(values[:half] or values) / 1024,
                "peak_second_half_mib": max(values[half:]) / 1024}

    def problems(self) -> list[str]:
        found = []
        minutes = self.minutes()
        if not minutes:
            found.append("no request was admitted")
        for k, tokens in enumerate(minutes):
            if abs(tokens - self.limit) > TOLERANCE * self.limit:
                found.append(f"{tokens:,} tokens admitted in minute {k + 1}: {tokens / self.limit - 1:+.1%} off the "
                             f"limit of {self.limit:,}")
            if not self.refused_in(k):
                found.append(f"no request was refused in minute {k + 1}: every client was busy streaming, so the "
                             "run measured how fast this machine generates, not the limit (lower --capacity or "
                             "--request-tokens, or run on a machine with cores to spare)")
        highest, _, _ = self.sliding()
        if highest > (1 + TOLERANCE) * self.limit:
            found.append(f"{highest:,} tokens admitted within 60 seconds: {highest / self.limit - 1:+.1%} over the "
                         f"limit of {self.limit:,}")
        if self.server_errors():
            found.append(f"{self.server_errors()} server errors: "
                         + "; ".join(sorted({o.detail for o in self.outcomes if o.detail})[:3]))
        memory = self.memory()
        if memory and memory["end_mib"] > memory["start_mib"] * 1.5 + 64:
            found.append(f"server memory grew from {memory['start_mib']:.0f} to {memory['end_mib']:.0f} MiB")
        return found

    def table(self) -> str:
        minutes = self.minutes()
        highest, lowest, below = self.sliding()
        counts = self.counts()
        whole = "whole minute" if self.duration >= WINDOW else "the whole run (under a minute)"
        rows = [
            ("clients", f"{self.clients}"),
            ("duration", f"{self.duration:.0f} s"),
            ("limit", f"{self.limit:,} tokens/min"),
            *[(f"tokens admitted, {whole} {k + 1}" if self.duration >= WINDOW else f"tokens admitted, {whole}",
               f"{t:,} ({t / self.limit - 1:+.1%})") for k, t in enumerate(minutes)],
            ("any 60 s window: most surely admitted", f"{highest:,} ({highest / self.limit - 1:+.1%})"),
            ("any 60 s window: fewest possibly admitted", f"{lowest:,} ({lowest / self.limit - 1:+.1%}; {below:.1%} "
                                                          "of windows under -5%)"),
            ("tokens left at an admission, fewest", f"{self.least_remaining():,} (the server's count)"),
            ("streams completed", f"{counts['completed']}"),
            ("refused with 429 before any byte", f"{counts['refused']}"),
            ("broken after their first byte", f"{counts['broken']}"),
            ("other failures", f"{counts['failed']}"),
            ("server errors (5xx or error events)", f"{self.server_errors()}"),
        ]
        memory = self.memory()
        if memory:
            rows.append(("server RSS start / peak / end", f"{memory['start_mib']:.0f} / {memory['peak_mib']:.0f} / "
                                                          f"{memory['end_mib']:.0f} MiB"))
            rows.append(("server RSS peak, first / second half", f"{memory['peak_first_half_mib']:.0f} / "
                                                                 f"{memory['peak_second_half_mib']:.0f} MiB"))
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)

    def to_dict(self) -> dict:
        highest, lowest, below = self.sliding()
        return {"limit": self.limit, "clients": self.clients, "duration": self.duration, **self.counts(),
                "server_errors": self.server_errors(), "minutes": self.minutes(), "highest_window": highest,
                "lowest_window": lowest, "windows_below": below,
                "least_remaining": self.least_remaining(), **self.memory(), "problems": self.problems()}


async def client_loop(client, deployment: str, max_tokens: int, temperature: float, stop_at: float,
                      outcomes: list[Outcome], epoch: float) -> None:
    """Ask, stream to the end, ask again; on a 429, wait as told."""
    import openai

    while time.monotonic() < stop_at:
        outcome = Outcome(sent=time.monotonic() - epoch)
        outcomes.append(outcome)
        try:
            stream = await client.chat.completions.create(
                model=deployment, messages=[{"role": "user", "content": PROMPT}], max_tokens=max_tokens,
                stream=True, stream_options={"include_usage": True}, temperature=temperature)
        except openai.RateLimitError as exc:
            outcome.kind, outcome.status = "refused", 429
            wait = float(exc.response.headers.get("retry-after-ms", 1000)) / 1000
            await asyncio.sleep(min(wait, max(0.0, stop_at - time.monotonic())) + random.uniform(0, 0.05))
            continue
        except openai.APIStatusError as exc:
            outcome.kind, outcome.status, outcome.detail = "failed", exc.status_code, f"{exc.status_code}: {exc}"
            continue
        except openai.APIError as exc:
            outcome.kind, outcome.detail = "failed", f"{type(exc).__name__}: {exc}"
            continue
        outcome.answered, outcome.status = time.monotonic() - epoch, 200
        outcome.remaining = int(stream.response.headers.get("x-ratelimit-remaining-tokens", -1))
        finished = None
        try:
            async for chunk in stream:
                outcome.chunks += 1
                if chunk.choices and chunk.choices[0].finish_reason:
                    finished = chunk.choices[0].finish_reason
                if chunk.usage:
                    outcome.tokens = chunk.usage.total_tokens
        except openai.APIError as exc:  # an error event, or the connection cut, after the stream began
            outcome.kind, outcome.detail = "broken", f"{type(exc).__name__}: {exc}"
            continue
        if finished and outcome.tokens:
            outcome.kind = "completed"
        else:
            outcome.kind, outcome.detail = "broken", f"the stream ended without {'usage' if finished else 'a finish'}"


async def sample_rss(pid: int | None, samples: list[tuple[float, int]], stop: asyncio.Event, epoch: float) -> None:
    if pid is None:
        return
    while not stop.is_set():
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                samples.append((time.monotonic() - epoch, int(line.split()[1])))
        try:
            await asyncio.wait_for(stop.wait(), 0.5)
        except asyncio.TimeoutError:
            pass


async def request_size(client, base_url: str, key: str, deployment: str) -> int:
    """The prompt's tokens, asked of the deployment's model directly (outside the deployment's limit)."""
    import httpx2 as httpx

    async with httpx.AsyncClient() as http:
        found = await http.get(f"{base_url}/deployments/{deployment}", headers={"Authorization": f"Bearer {key}"})
    model = found.raise_for_status().json()["properties"]["model"]["name"]
    probe = await client.chat.completions.create(model=model, messages=[{"role": "user", "content": PROMPT}],
                                                 max_tokens=1)
    return probe.usage.prompt_tokens


async def drive(base_url: str, key: str, deployment: str, *, clients: int, duration: float, request_tokens: int,
                temperature: float, limit: int, server_pid: int | None) -> Report:
    from openai import AsyncOpenAI

    import httpx2 as httpx

    client = AsyncOpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=600,
                         http_client=httpx.AsyncClient(limits=httpx.Limits(max_connections=clients + 4)))
    max_tokens = request_tokens - await request_size(client, base_url, key, deployment)
    outcomes: list[Outcome] = []
    rss: list[tuple[float, int]] = []
    epoch = time.monotonic()
    stop_at = epoch + duration
    stop = asyncio.Event()
    sampler = asyncio.create_task(sample_rss(server_pid, rss, stop, epoch))
    await asyncio.gather(*(client_loop(client, deployment, max_tokens, temperature, stop_at, outcomes, epoch)
                           for _ in range(clients)))
    stop.set()
    await sampler
    await client.close()
    # Only requests sent before the end count; their streams were read to the end above.
    return Report(limit=limit, duration=duration, clients=clients, outcomes=outcomes, rss_kib=rss)


# --- the service under test ---

class Service:
    """`tunelab serve` in its own process, on a private home with the tiny model imported as `tiny`."""

    def __init__(self, home: Path, port: int, key: str = "load-key"):
        self.home, self.port, self.key = home, port, key
        self.base_url = f"http://127.0.0.1:{port}/v1"
        self.proc: subprocess.Popen | None = None

    def env(self) -> dict:
        return {**os.environ, "TUNELAB_HOME": str(self.home), "TUNELAB_API_KEY": self.key,
                "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}

    def start(self, model: Path) -> "Service":
        import httpx2 as httpx

        subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path; "
                        "from tunelab.models.catalog import import_model; import_model(Path(sys.argv[1]), 'tiny')",
                        str(model)], env=self.env(), check=True)
        log = (self.home / "serve.log").open("ab")
        self.proc = subprocess.Popen([sys.executable, "-c", "from tunelab.cli.main import main; main()", "serve",
                                      "--port", str(self.port)],
                                     env=self.env(), stdout=log, stderr=log)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError((self.home / "serve.log").read_text())
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/health").status_code == 200:
                    return self
            except httpx.TransportError:
                time.sleep(0.1)
        raise RuntimeError("tunelab serve did not start")

    def deploy(self, name: str, capacity: int, model: str = "tiny") -> None:
        import httpx2 as httpx

        headers = {"Authorization": f"Bearer {self.key}"}
        body = {"sku": {"name": "Standard", "capacity": capacity},
                "properties": {"model": {"format": "OpenAI", "name": model}, "raiPolicyName": "None"}}
        httpx.put(f"{self.base_url}/deployments/{name}", json=body, headers=headers).raise_for_status()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            state = httpx.get(f"{self.base_url}/deployments/{name}", headers=headers).json()
            state = state["properties"]["provisioningState"]
            if state == "Succeeded":
                return
            if state == "Failed":
                raise RuntimeError(f"the deployment failed: {state}")
            time.sleep(0.2)
        raise RuntimeError("the deployment was not ready in time")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(60)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(*, clients: int, duration: float, capacity: int, request_tokens: int, temperature: float = 0.0,
        base_url: str | None = None, key: str | None = None, deployment: str = "load", model: Path | None = None,
        workdir: Path | None = None) -> Report:
    """Start a service on `model` (default: a tiny random llama built here) unless `base_url` names one, deploy,
    drive the clients; the report."""
    limit = capacity * 1000
    if base_url:
        return asyncio.run(drive(base_url, key or os.environ.get("TUNELAB_API_KEY", ""), deployment,
                                 clients=clients, duration=duration, request_tokens=request_tokens,
                                 temperature=temperature, limit=limit,
                                 server_pid=None))
    from tests.conftest import build_tiny_model

    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        model = model or build_tiny_model(Path(tmp) / "tiny-llama")
        service = Service(Path(tmp) / "home", free_port()).start(model)
        try:
            service.deploy(deployment, capacity)
            return asyncio.run(drive(service.base_url, service.key, deployment, clients=clients, duration=duration,
                                     request_tokens=request_tokens, temperature=temperature, limit=limit,
                                     server_pid=service.proc.pid))
        finally:
            service.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--duration", type=float, default=125.0, help="seconds of sending (streams then finish); "
                        "over a minute, each whole minute from the first admission is measured")
    parser.add_argument("--capacity", type=int, default=20, help="the deployment's capacity: thousands of "
                        "tokens per minute")
    parser.add_argument("--request-tokens", type=int, default=250, help="per request, the prompt and max_tokens "
                        "(which is set to make up the rest); more than 1,000/6, so the token limit binds before the "
                        "request limit")
    parser.add_argument("--temperature", type=float, default=0.0, help="0: every answer runs to max_tokens on the "
                        "tiny model (it never picks the end of its turn), so each request uses what it was admitted on")
    parser.add_argument("--base-url", help="a running service's /v1 URL (default: start one)")
    parser.add_argument("--deployment", default="load", help="with --base-url: an existing deployment")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    parser.add_argument("--dump", type=Path, help="write every request's outcome here, one JSON object a line, "
                        "then the server's memory samples")
    args = parser.parse_args()
    report = run(clients=args.clients, duration=args.duration, capacity=args.capacity, request_tokens=args.request_tokens,
                 temperature=args.temperature, base_url=args.base_url, deployment=args.deployment)
    print(report.table())
    if args.dump:
        args.dump.write_text("".join(json.dumps(o.__dict__) + "\n" for o in report.outcomes)
                             + json.dumps({"rss_kib": report.rss_kib}) + "\n")
    if args.json:
        print(json.dumps(report.to_dict()))
    problems = report.problems()
    for problem in problems:
        print(f"FAIL: {problem}")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
