"""What tunelab's control plane costs on top of the engine that serves a deployment: time to first token and time
per token, through tunelab and straight to the engine, under the same loads in the same run.

    .venv/bin/python bench/serve.py                       # SmolLM2-135M-Instruct on llama.cpp and on tunelab's engine
    .venv/bin/python bench/serve.py --engines llama.cpp   # only the llama.cpp deployment
    .venv/bin/python bench/serve.py --filter Default      # with the content filter on (it holds text per sentence)
    .venv/bin/python bench/serve.py --quick               # a smoke run: 16 tokens, small loads, one round

It starts `tunelab serve` in its own process on a private TUNELAB_HOME and deploys the model once per engine
(`llama.cpp`: a `llama-server` that tunelab starts on the model's GGUF export; `local`: tunelab's in-process
engine), with the content filter off unless `--filter` names a policy and a capacity no load reaches. Two loads,
each a number of clients that send streamed greedy requests one after another through the stock `openai` SDK:
`--streams` clients (8) sending two requests each, then `--clients` clients (50) sending one each.

Through tunelab a client calls the deployment's chat route (the Azure shape the playground uses); straight to the
engine it sends llama-server's `/v1/completions` the very token ids tunelab renders for those messages, so both
sides decode the same tokens. The two sides take turns, round by round, in alternating order, so a busy machine
slows both alike. Reported per load: median time to first token, median time per token after it (each request's
decode time over its tokens), aggregate tokens per second, and tunelab's overhead over the engine in percent.
vLLM needs a GPU; a deployment on it is measured the same way with `--engines vllm` where one is present.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SYSTEM = (ROOT / "examples" / "travel" / "system.txt").read_text().strip()  # the lab's system message
QUESTION = "What's the best way to get around Rome?"
KEY = "serve-bench-key"


@dataclass
class Sample:
    """One streamed request: seconds to its first token, seconds per token after it, tokens produced."""

    first: float
    per_token: float
    tokens: int


@dataclass
class LoadResult:
    samples: list[Sample]
    seconds: float  # wall time of the whole load

    @property
    def first(self) -> float:
        return statistics.median(s.first for s in self.samples)

    @property
    def per_token(self) -> float:
        return statistics.median(s.per_token for s in self.samples if s.tokens > 1)

    @property
    def throughput(self) -> float:
        return sum(s.tokens for s in self.samples) / self.seconds


class Service:
    """`tunelab serve` in its own process, on a private home, with deployments made through its API."""

    def __init__(self, home: Path, port: int):
        self.home, self.port = home, port
        self.base_url = f"http://127.0.0.1:{port}/v1"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Service":
        env = {**os.environ, "TUNELAB_HOME": str(self.home), "TUNELAB_API_KEY": KEY,
               "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        self.home.mkdir(parents=True, exist_ok=True)
        log = (self.home / "serve.log").open("ab")
        self.proc = subprocess.Popen([sys.executable, "-c", "from tunelab.cli.main import main; main()", "serve",
                                      "--port", str(self.port)],
                                     env=env, stdout=log, stderr=log)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                sys.exit("tunelab serve stopped:\n" + (self.home / "serve.log").read_text()[-3000:])
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2)
                return self
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.2)
        sys.exit("tunelab serve did not start in 120 s")

    def request(self, method: str, path: str, body: dict | None = None) -> dict:
        request = urllib.request.Request(f"{self.base_url}{path}", method=method,
                                         data=json.dumps(body).encode() if body is not None else None,
                                         headers={"Authorization": f"Bearer {KEY}",
                                                  "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read() or b"{}")

    def deploy(self, name: str, model: str, engine: str, policy: str) -> dict:
        """Deploy and wait until it is ready (the first GGUF export included); the deployment object."""
        self.request("PUT", f"/deployments/{name}", {
            "sku": {"name": "Standard", "capacity": 1000},
            "properties": {"model": {"format": "OpenAI", "name": model}, "raiPolicyName": policy,
                           "engine": {"type": engine}}})
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            deployment = self.request("GET", f"/deployments/{name}")
            state = deployment["properties"]["provisioningState"]
            if state == "Succeeded":
                return deployment
            if state == "Failed":
                sys.exit(f"the {engine} deployment failed: {deployment['properties'].get('error')}")
            time.sleep(0.5)
        sys.exit(f"the {engine} deployment was not ready in 15 minutes")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(120)


async def timed(stream) -> Sample:
    """Read one streamed answer; its timing from the request to the first and last text."""
    started = time.perf_counter()
    first = last = None
    tokens = 0
    async for chunk in await stream():
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
        for choice in chunk.choices:
            text = choice.delta.content if hasattr(choice, "delta") else choice.text
            if text:
                last = time.perf_counter()
                first = first or last
    if first is None:
        raise RuntimeError("an answer came back without text")
    return Sample(first - started, (last - first) / max(1, tokens - 1), tokens)


async def load(make_stream, clients: int, requests_each: int) -> LoadResult:
    async def client() -> list[Sample]:
        return [await timed(make_stream) for _ in range(requests_each)]

    started = time.perf_counter()
    results = await asyncio.gather(*(client() for _ in range(clients)))
    return LoadResult([s for samples in results for s in samples], time.perf_counter() - started)


def sides(service: Service, deployment: dict, prompt_ids: list[int], max_tokens: int) -> dict:
    """The ways to ask the same question: through tunelab's deployment and, for an engine tunelab started,
    straight to that engine with the same token ids."""
    from openai import AsyncOpenAI

    name = deployment["name"]
    through = AsyncOpenAI(base_url=service.base_url, api_key=KEY, max_retries=0, timeout=600)
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}]
    ways = {"tunelab": lambda: through.chat.completions.create(
        model=name, messages=messages, max_tokens=max_tokens, temperature=0, stream=True,
        stream_options={"include_usage": True})}
    engine = deployment["properties"].get("engine") or {}
    if engine.get("port"):
        direct = AsyncOpenAI(base_url=f"http://127.0.0.1:{engine['port']}/v1", api_key="none", max_retries=0,
                             timeout=600)
        ways["engine"] = lambda: direct.completions.create(
            model="engine", prompt=prompt_ids, max_tokens=max_tokens, temperature=0, stream=True,
            stream_options={"include_usage": True}, extra_body={"top_k": 0, "min_p": 0.0})
    return ways


async def measure(ways: dict, loads: dict, rounds: int) -> dict:
    """Each load on each side, `rounds` times, the sides in alternating order; the medians per side."""
    figures = {}
    for load_name, (clients, each) in loads.items():
        runs = {side: [] for side in ways}
        for r in range(rounds):
            order = list(ways) if r % 2 == 0 else list(reversed(ways))
            for side in order:
                runs[side].append(await load(ways[side], clients, each))
        figures[load_name] = {side: {"first_token_ms": 1000 * statistics.median(x.first for x in results),
                                     "per_token_ms": 1000 * statistics.median(x.per_token for x in results),
                                     "tokens_per_second": statistics.median(x.throughput for x in results),
                                     "tokens": statistics.median(sum(s.tokens for s in x.samples) for x in results)}
                              for side, results in runs.items()}
    return figures


def table(engine: str, figures: dict) -> str:
    lines = [f"\n{engine}: median of rounds",
             f"{'load':<12}{'side':<9}{'first token ms':>15}{'ms / token':>12}{'tokens/s':>10}{'tokens':>8}"]
    for load_name, by_side in figures.items():
        for side, f in by_side.items():
            lines.append(f"{load_name:<12}{side:<9}{f['first_token_ms']:>15.1f}{f['per_token_ms']:>12.2f}"
                         f"{f['tokens_per_second']:>10.1f}{f['tokens']:>8.0f}")
        if "engine" in by_side:
            t, e = by_side["tunelab"], by_side["engine"]
            lines.append(f"{'':<12}{'overhead':<9}{100 * (t['first_token_ms'] / e['first_token_ms'] - 1):>14.1f}%"
                         f"{100 * (t['per_token_ms'] / e['per_token_ms'] - 1):>11.1f}%"
                         f"{100 * (t['tokens_per_second'] / e['tokens_per_second'] - 1):>9.1f}%")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="SmolLM2-135M-Instruct")
    parser.add_argument("--engines", default="llama.cpp,local", help="comma-separated: llama.cpp, local, vllm")
    parser.add_argument("--filter", default="None", help="the deployments' content filter policy (None: off)")
    parser.add_argument("--tokens", type=int, default=64, help="max_tokens of each request")
    parser.add_argument("--streams", type=int, default=8, help="clients of the first load (two requests each)")
    parser.add_argument("--clients", type=int, default=50, help="clients of the second load (one request each)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="16 tokens, 2 streams, 4 clients, one round")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if args.quick:
        args.tokens, args.streams, args.clients, args.rounds = 16, 2, 4, 1
    loads = {f"{args.streams} streams": (args.streams, 2), f"{args.clients} clients": (args.clients, 1)}

    from tests.conftest import free_port

    results = {"cpu": _cpu(), "model": args.model, "tokens": args.tokens, "filter": args.filter, "engines": {}}
    with tempfile.TemporaryDirectory() as tmp:
        service = Service(Path(tmp) / "home", free_port()).start()
        try:
            for engine in args.engines.split(","):
                started = time.perf_counter()
                deployment = service.deploy(f"bench-{engine.replace('.', '')}", args.model, engine, args.filter)
                print(f"{engine}: deployed in {time.perf_counter() - started:.1f} s", flush=True)
                prompt_ids = _prompt_ids(Path(tmp) / "home", args.model)

                async def measured() -> dict:  # the SDK's clients live on the event loop that runs the loads
                    return await measure(sides(service, deployment, prompt_ids, args.tokens), loads, args.rounds)
                figures = asyncio.run(measured())
                results["engines"][engine] = figures
                print(table(engine, figures), flush=True)
        finally:
            service.stop()
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


def _prompt_ids(home: Path, model: str) -> list[int]:
    """The token ids tunelab renders for the benchmark's messages (the model's own chat template)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(home / "models" / model)
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}]
    return list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                              return_dict=True)["input_ids"])


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
    return f"{os.cpu_count()} cores"


if __name__ == "__main__":
    main()
