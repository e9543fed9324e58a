"""Decode speed: tunelab's engine vs transformers `generate()` and vs llama.cpp, on the same model, prompt and
greedy decoding.

    .venv/bin/python bench/decode.py                  # SmolLM2-135M-Instruct, 128 new tokens, 8 streams
    .venv/bin/python bench/decode.py --weights fp32   # the engine without 4-bit/8-bit decode weights
    .venv/bin/python bench/decode.py --generic        # through transformers' forward, not the Llama decoder
    .venv/bin/python bench/decode.py --kernels-off-too  # the engine once more with PyTorch's kernels only
    .venv/bin/python bench/decode.py --llamacpp-only  # only the comparison with llama.cpp
    .venv/bin/python bench/decode.py --quick          # a smoke run: 16 tokens, one round, no quality check

The prompt is the lab's system message plus its first question. Every side generates exactly `--tokens` tokens
(end-of-turn ignored) so they do the same work. Reported: time to first token, single-stream tokens/s, the
engine's aggregate tokens/s with `--streams` concurrent answers (half of them through a LoRA adapter, so one
batch mixes the base model and a fine-tune), and what the engine's decode weights cost in quality: validation
loss on examples/travel/valid.jsonl and how often its next-token choice agrees with fp32.

The 8 streams are timed once more sampling (temperature 0.7, top_p 0.95, seeded), which costs the engine a
softmax and a draw per answer and token.

The engine runs with its prompt cache, as the server does: after the first request (whose time to first token
is reported too), the lab's system message is cached, as an app's is after its first request. A long
conversation's next turn is timed with and without the cache.

Each side runs in its own process, as each would be used: `generate()` from a script's main thread with
PyTorch's default threads, the engine set up as `tunelab serve` sets it up (its scheduler thread has the cores).
With `--kernels-off-too` a third process runs the engine with `TUNELAB_KERNELS=off`, so tunelab's AMX kernels and
PyTorch's own are compared in the same run (`kernels_vs_off`; on a CPU without AMX both use PyTorch's).

llama.cpp (`make llamacpp`: llama-cpp-python and llama-server, built from source with portable flags) runs on the
GGUF file tunelab's copy of the model was converted from, with as many threads as the engine has cores: one
stream through llama-cpp-python in its own process, and one and `--streams` concurrent streams through
`llama-server --parallel N -cb` (streamed `/completion` requests from as many client threads, prompt as token
ids). The engine and llama.cpp stay loaded side by side and take turns, run by run, for `--rounds` rounds (each
round in the reverse order of the last), so a busy machine slows both alike; figures are medians with their
range, and the ratios are tunelab's over llama.cpp's. Both sides reuse the prompt they have seen (the engine's
prompt cache, llama.cpp's KV cache prefix); the cold-prompt rows time one token with nothing reused. Without
llama-cpp-python the comparison is skipped with one line on stderr; without llama-server, its rows are.
"""

from __future__ import annotations

import argparse
import http.client
import importlib.util
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

ROOT = Path(__file__).resolve().parent.parent
SYSTEM = (ROOT / "examples" / "travel" / "system.txt").read_text().strip()  # the lab's system message
sys.path.insert(0, str(ROOT))

from tunelab.models.catalog import BUILTIN, resolve_model  # noqa: E402  (no torch import: see engine_side)
from tunelab.threads import reserve_cores  # noqa: E402

if TYPE_CHECKING:  # imported inside the functions: torch must not load before reserve_cores()
    from tunelab.inference.engine import Engine



def run_generate(model, prompt: list[int], tokens: int) -> dict:
    import torch

    ids = torch.tensor([prompt])
    with torch.no_grad():
        started = time.perf_counter()
        model.generate(ids, max_new_tokens=1, min_new_tokens=1, do_sample=False)
        first = time.perf_counter() - started
        started = time.perf_counter()
        out = model.generate(ids, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
        seconds = time.perf_counter() - started
    assert out.shape[1] - len(prompt) == tokens
    return {"ttft_s": round(first, 3), "tokens_per_s": round(tokens / seconds, 1)}


def run_engine(engine: Engine, prompt: list[int], tokens: int, streams: int, adapter: str | None = None,
               every: int = 2, temperature: float = 0, top_p: float = 1.0, keep_tokens: bool = False) -> dict:
    """`streams` answers at once; with `adapter`, every `every`-th one goes through it (1: all of them).
    `keep_tokens`: the report carries the first answer's tokens."""
    from tunelab.inference.engine import SamplingParams

    finished = threading.Semaphore(0)
    firsts: list[float] = []
    ends: list[float] = []
    started = time.perf_counter()

    def listener():
        seen = []

        def on_event(kind, payload):
            if kind == "delta" and not seen:
                seen.append(1)
                firsts.append(time.perf_counter() - started)
            if kind in ("done", "error"):
                ends.append(time.perf_counter() - started)
                finished.release()
        return on_event

    sampling = [SamplingParams(max_tokens=tokens, temperature=temperature, top_p=top_p, seed=i)
                for i in range(streams)]
    generations = [engine.submit(prompt, params, adapter=adapter if (i + 1) % every == 0 else None,
                                 end_ids=set(), on_event=listener())
                   for i, params in enumerate(sampling)]
    for _ in range(streams):
        finished.acquire()
    return stream_report([len(g.tokens) for g in generations], firsts, ends,
                         generations[0].tokens if keep_tokens else None)


def stream_report(counts: list[int], firsts: list[float], ends: list[float], tokens: list[int] | None = None) -> dict:
    """Timings of answers started together (seconds from the start: each one's first token and its end).
    tokens_per_s: all tokens over the whole time (the aggregate, for several streams); decode_tokens_per_s: one
    stream's tokens after its first over the time after it (the decode steps alone, prompt excluded)."""
    report = {"ttft_s": round(min(firsts), 3), "tokens_per_s": round(sum(counts) / max(ends), 1)}
    if len(counts) == 1:
        report["decode_tokens_per_s"] = round((counts[0] - 1) / (ends[0] - firsts[0]), 1) if counts[0] > 1 else None
    else:  # the stream that waited longest for its first token, and one stream's own rate
        report["last_ttft_s"] = round(max(firsts), 3)
        report["per_stream_tokens_per_s"] = round(sum(counts) / sum(ends), 1)
    if tokens is not None:
        report["tokens"] = list(tokens)
    return report


def make_adapter(model_path: Path, out: Path) -> Path:
    """A LoRA adapter shaped like tunelab's fine-tunes (rank 16, all linear layers). It is freshly initialised,
    so it leaves the answers unchanged (lora_B is zero) but costs what a trained one costs."""
    from peft import LoraConfig, get_peft_model

    from tunelab.models.load import load_causal_lm

    get_peft_model(load_causal_lm(model_path), LoraConfig(r=16, lora_alpha=32, target_modules="all-linear")
                   ).save_pretrained(out)
    return out


def quality(engine: Engine, reference, rows: int) -> dict:
    """Validation loss with the engine's weights vs fp32, and how often both pick the same next token. The
    engine's side is teacher-forced one token at a time through its KV cache, the path decoding takes: each
    conversation alone (one row per step), and all of them decoded together (a row each, as concurrent answers
    are, which takes the kernels for several rows)."""
    import torch

    conversations = []
    for line in (ROOT / "examples/travel/valid.jsonl").read_text().splitlines()[:rows]:
        text = engine.tokenizer.apply_chat_template(json.loads(line)["messages"], tokenize=False)
        conversations.append(engine.tokenizer(text, add_special_tokens=False)["input_ids"])
    losses, agree, count = [0.0, 0.0, 0.0], [0, 0], 0
    with torch.no_grad():
        together = decode_together(engine, conversations)
        for ids, batched in zip(conversations, together):
            exact = reference(input_ids=torch.tensor([ids])).logits[0, :-1].float()
            target = torch.tensor(ids[1:])
            for i, ours in enumerate((exact, decode_step_logits(engine, ids), batched)):
                losses[i] += torch.nn.functional.cross_entropy(ours, target, reduction="sum").item()
                if i:
                    agree[i - 1] += int((exact.argmax(-1) == ours.argmax(-1)).sum())
            count += len(target)
    return {"valid_loss_fp32": round(losses[0] / count, 4), "valid_loss_engine": round(losses[1] / count, 4),
            "next_token_agreement": round(agree[0] / count, 4),
            "valid_loss_engine_together": round(losses[2] / count, 4),
            "next_token_agreement_together": round(agree[1] / count, 4), "tokens": count}


def decode_together(engine: Engine, conversations: list[list[int]]):
    """Each conversation's logits after each of its tokens but the last, from decode steps over all of them at
    once (a finished conversation's row is fed a placeholder token until the longest ends)."""
    import torch

    if engine.decoder is None:
        return [decode_step_logits(engine, ids) for ids in conversations]
    cache = engine.decoder.new_cache(engine.context)
    steps = [[engine.decoder.prefill(cache, cache.add_row(), ids[:1], None)] for ids in conversations]
    for t in range(1, max(map(len, conversations)) - 1):
        logits = engine.decoder.step(cache, [ids[t] if t < len(ids) else 0 for ids in conversations],
                                     [None] * len(conversations))
        for i, ids in enumerate(conversations):
            if t < len(ids) - 1:
                steps[i].append(logits[i])
    return [torch.stack(s) for s in steps]


def decode_step_logits(engine: Engine, ids: list[int]):
    """The logits after each of `ids` but the last, each from one decode step."""
    import torch

    if engine.decoder is None:  # the generic path: transformers' forward with its own cache
        cache, steps = None, []
        for i in range(len(ids) - 1):
            out = engine.model(input_ids=torch.tensor([ids[i:i + 1]]), cache=cache, use_cache=True)
            cache = out.cache
            steps.append(out.logits[0, -1].float())
        return torch.stack(steps)
    cache = engine.decoder.new_cache(engine.context)
    steps = [engine.decoder.prefill(cache, cache.add_row(), ids[:1], None)]
    steps += [engine.decoder.step(cache, [token], [None])[0] for token in ids[1:-1]]
    return torch.stack(steps)


def generate_side(args) -> dict:
    import torch

    from tunelab.models.load import load_causal_lm, load_tokenizer

    base = resolve_model(args.model)
    model = load_causal_lm(base.path).eval()
    run_generate(model, lab_prompt(load_tokenizer(base.path)), 4)  # warm-up
    return {"transformers_generate": run_generate(model, lab_prompt(load_tokenizer(base.path)), args.tokens),
            "threads": torch.get_num_threads()}


def engine_side(args) -> dict:
    reserve_cores()  # as `tunelab serve` does
    from tunelab.inference.engine import Engine
    from tunelab.inference.kernels import amx_kernels
    from tunelab.models.load import load_causal_lm

    base = resolve_model(args.model)
    engine = Engine(base, weights=args.weights, generic=args.generic)
    with tempfile.TemporaryDirectory() as tmp:
        engine.attach("adapter", make_adapter(base.path, Path(tmp)))
    prompt = lab_prompt(engine.tokenizer)
    first = run_engine(engine, prompt, 4, 1)  # warm-up; it leaves the prompt's start in the prompt cache
    report = {"decode_weights": engine.weights, "decoder": "transformers" if engine.decoder is None else "llama",
              "amx_kernels": amx_kernels() is not None,
              "prompt_tokens": len(prompt), "first_request_ttft_s": first["ttft_s"],
              "tunelab_single": run_engine(engine, prompt, args.tokens, 1),
              "tunelab_single_adapter": run_engine(engine, prompt, args.tokens, 1, adapter="adapter", every=1),
              f"tunelab_{args.streams}_streams": run_engine(engine, prompt, args.tokens, args.streams),
              f"tunelab_{args.streams}_streams_half_adapter": run_engine(engine, prompt, args.tokens, args.streams,
                                                                         adapter="adapter"),
              f"tunelab_{args.streams}_streams_sampled": run_engine(engine, prompt, args.tokens, args.streams,
                                                                    temperature=0.7, top_p=0.95)}
    report["long_chat_ttft"] = long_chat_ttft(engine)
    if args.quality_rows:
        report["quality"] = quality(engine, load_causal_lm(base.path).eval(), args.quality_rows)
    return report


def long_chat_ttft(engine: Engine) -> dict:
    """Time to first token for a long conversation (travel training chats strung together as one, up to 1,000
    tokens), then for its next turn: the conversation with its last answer and one more question, whose start
    the prompt cache holds; and that next turn without the prompt cache."""
    from tunelab.data.render import render_prompt

    messages = [{"role": "system", "content": SYSTEM}]
    for line in (ROOT / "examples/travel/train.jsonl").read_text().splitlines():
        turns = [m for m in json.loads(line)["messages"] if m["role"] != "system"]
        if len(render_prompt(engine.tokenizer, messages + turns)) > 1000:
            break
        messages += turns
    first = render_prompt(engine.tokenizer, messages[:-1])  # the conversation up to its last answer
    following = render_prompt(engine.tokenizer, messages + [{"role": "user", "content": "What else is there?"}])
    report = {"prompt_tokens": len(first), "next_turn_prompt_tokens": len(following)}
    if engine.decoder is not None and engine.decoder.prompt_cache is not None:
        cache, engine.decoder.prompt_cache = engine.decoder.prompt_cache, None  # between requests: no race
        report["next_turn_ttft_s_without_cache"] = run_engine(engine, following, 1, 1)["ttft_s"]
        engine.decoder.prompt_cache = cache
    report["ttft_s"] = run_engine(engine, first, 1, 1)["ttft_s"]
    report["next_turn_ttft_s"] = run_engine(engine, following, 1, 1)["ttft_s"]
    return report


def lab_prompt(tokenizer) -> list[int]:
    from tunelab.data.render import render_prompt

    return render_prompt(tokenizer, [{"role": "system", "content": SYSTEM},
                                     {"role": "user", "content": "What can you do?"}])


# --- llama.cpp as a peer: the same GGUF, the same cores, turns taken with the engine ---


def llamacpp_missing(model: str) -> str | None:
    """Why llama.cpp cannot be compared here, or None."""
    if importlib.util.find_spec("llama_cpp") is None:
        return "llama-cpp-python is not installed (make llamacpp)"
    if model_gguf(model) is None:
        return f"{model} has no GGUF file of its own to give llama.cpp"
    return None


def model_gguf(model: str) -> Path | None:
    """The GGUF file tunelab's copy of `model` was converted from (built-in models only)."""
    builtin = BUILTIN.get(model)
    return builtin.locate() if builtin else None


def llama_server_binary() -> Path | None:
    """$LLAMA_SERVER, else the one `make llamacpp` puts beside this Python, else one on the PATH."""
    for candidate in (os.environ.get("LLAMA_SERVER"), Path(sys.executable).parent / "llama-server",
                      shutil.which("llama-server")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return Path(candidate)
    return None


def serve_commands(handle) -> None:
    """A worker's loop: `handle(None)` once (its ready message), then `handle(command)` for each JSON line on
    stdin, each answer a JSON line on the original stdout. Anything the libraries print goes to stderr."""
    answers = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    answers.write(json.dumps(handle(None)) + "\n")
    answers.flush()
    for line in sys.stdin:
        answers.write(json.dumps(handle(json.loads(line))) + "\n")
        answers.flush()


def engine_worker(args) -> None:
    reserve_cores()  # as `tunelab serve` does
    from tunelab.inference.engine import Engine

    engine = Engine(resolve_model(args.model), weights=args.weights, generic=args.generic)
    prompt = lab_prompt(engine.tokenizer)
    run_engine(engine, prompt, 4, args.streams)  # warm-up; it leaves the system message in the prompt cache
    steps = [0, 0.0]  # decode steps and their seconds: the forward passes alone, the scheduler's work left out
    if engine.decoder is not None:
        step = engine.decoder.step

        def timed_step(*a, **k):
            started = time.perf_counter()
            try:
                return step(*a, **k)
            finally:
                steps[0], steps[1] = steps[0] + 1, steps[1] + time.perf_counter() - started
        engine.decoder.step = timed_step

    def handle(command):
        if command is None:
            return {"prompt": prompt, "decode_weights": engine.weights,
                    "threads": args.threads or len(os.sched_getaffinity(0))}
        if command.get("cold"):  # nothing reused: the whole prompt computed
            saved = engine.decoder.prompt_cache if engine.decoder is not None else None
            if saved is not None:
                engine.decoder.prompt_cache = None  # between requests: no race
            try:
                return run_engine(engine, prompt, 1, 1)
            finally:
                if saved is not None:
                    engine.decoder.prompt_cache = saved
        steps[:] = [0, 0.0]
        report = run_engine(engine, prompt, command["tokens"], command["streams"], keep_tokens=True)
        if steps[0]:
            report["forward_ms_per_token"] = round(steps[1] * 1000 / steps[0] / command["streams"], 3)
        return report
    serve_commands(handle)


def llamacpp_worker(args) -> None:
    """llama-cpp-python in this process, one stream, greedy, end-of-turn ignored, as the engine's runs."""
    import llama_cpp
    from llama_cpp import Llama

    # flash attention on, as llama.cpp's own tools default to on the CPU (llama-cpp-python defaults to off)
    llm = Llama(model_path=str(model_gguf(args.model)), n_threads=args.threads, n_threads_batch=args.threads,
                n_ctx=2048, n_batch=512, flash_attn=True, verbose=False)

    def handle(command):
        if command is None:
            return {"threads": llm.context_params.n_threads, "llama_cpp_python": llama_cpp.__version__}
        tokens = command["tokens"]
        if command.get("cold"):
            llm.reset()  # else generate() reuses the prompt the last call left in the KV cache
        llama_cpp.llama_perf_context_reset(llm.ctx)
        answer, firsts, started = [], [], time.perf_counter()
        for token in llm.generate(command["prompt"], temp=0.0, repeat_penalty=1.0):
            answer.append(token)
            if len(answer) == 1:
                firsts.append(time.perf_counter() - started)
            if len(answer) == tokens:
                break
        ends = [time.perf_counter() - started]
        report = stream_report([len(answer)], firsts, ends, answer)
        perf = llama_cpp.llama_perf_context(llm.ctx)  # llama.cpp's own time in its decode calls, Python left out
        if perf.n_eval:
            report["forward_ms_per_token"] = round(perf.t_eval_ms / perf.n_eval, 3)
        return report
    serve_commands(handle)


class Worker:
    """A side of the comparison in its own process, kept between runs so that the sides take turns."""

    def __init__(self, side: str, extra: list[str] = (), env: dict[str, str] | None = None):
        self.side = side
        self.log = tempfile.TemporaryFile(mode="w+")
        self.process = subprocess.Popen([sys.executable, __file__, *sys.argv[1:], *extra, "--side", side],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True,
                                        env={**os.environ, **(env or {})})
        self.ready = self._answer()

    def run(self, **command) -> dict:
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        return self._answer()

    def _answer(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            self.log.seek(0)
            sys.exit(f"the {self.side} side failed:\n{self.log.read()[-3000:]}")
        return json.loads(line)

    def close(self) -> None:
        self.process.stdin.close()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()


class LlamaServer:
    """`llama-server` on the GGUF with one slot per stream and continuous batching, on a free local port."""

    def __init__(self, binary: Path, gguf: Path, threads: int, streams: int, context_per_stream: int = 1024):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.log = tempfile.TemporaryFile(mode="w+")
        self.process = subprocess.Popen(
            [str(binary), "-m", str(gguf), "-t", str(threads), "-tb", str(threads), "--parallel", str(streams),
             "-cb", "-c", str(streams * context_per_stream), "--host", "127.0.0.1", "--port", str(self.port)],
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while not self._healthy():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.close()
                self.log.seek(0)
                sys.exit(f"llama-server did not start:\n{self.log.read()[-3000:]}")
            time.sleep(0.2)

    def _healthy(self) -> bool:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
            connection.request("GET", "/health")
            return connection.getresponse().status == 200
        except OSError:
            return False

    def run(self, prompt: list[int], tokens: int, streams: int) -> dict:
        """`streams` streamed /completion requests at once from as many client threads, greedy, end-of-turn
        ignored, each server's prompt cache on (its default); timed as the engine's streams are."""
        firsts, ends, counts = [None] * streams, [None] * streams, [0] * streams
        failures: list[str] = []
        go = threading.Barrier(streams + 1)
        started = 0.0

        def client(i: int) -> None:
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
            body = json.dumps({"prompt": prompt, "n_predict": tokens, "ignore_eos": True, "temperature": 0,
                               "stream": True, "cache_prompt": True, "seed": i})
            go.wait()
            try:
                connection.request("POST", "/completion", body, {"Content-Type": "application/json"})
                response = connection.getresponse()
                if response.status != 200:
                    raise RuntimeError(f"HTTP {response.status}: {response.read()[:300]!r}")
                for line in response:
                    if not line.startswith(b"data: "):
                        continue
                    chunk = json.loads(line[6:])
                    if firsts[i] is None and (chunk.get("tokens") or chunk.get("content")):
                        firsts[i] = time.perf_counter() - started
                    if chunk.get("stop"):
                        counts[i] = chunk.get("tokens_predicted") or chunk["timings"]["predicted_n"]
                        ends[i] = time.perf_counter() - started
                        break
            except Exception as exc:  # reported below, with the others
                failures.append(f"stream {i}: {type(exc).__name__}: {exc}")
            finally:
                connection.close()

        threads = [threading.Thread(target=client, args=(i,)) for i in range(streams)]
        for thread in threads:
            thread.start()
        started = time.perf_counter()
        go.wait()
        for thread in threads:
            thread.join()
        if failures or None in ends or None in firsts:
            sys.exit("llama-server failed: " + "; ".join(failures or ["a stream ended without its tokens"]))
        return stream_report(counts, firsts, ends)

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()


def compare_with_llamacpp(args) -> dict:
    """tunelab's engine and llama.cpp on the same GGUF with the same cores, taking turns over `args.rounds`
    rounds (each round's order the reverse of the last), so a noisy machine slows both alike. Per run: one
    stream (llama-cpp-python in-process; through llama-server too), `args.streams` concurrent streams (the
    engine; llama-server), and one token from a cold prompt (nothing reused: the prefill alone). Each figure
    is the median over the rounds, with its range."""
    server_binary = llama_server_binary()
    load_before = os.getloadavg()[0]
    # --threads: the engine's scheduler thread gets that many, as OMP_NUM_THREADS gives `tunelab serve`
    engine = Worker("engine-worker", env={"OMP_NUM_THREADS": str(args.threads)} if args.threads else None)
    prompt, threads = engine.ready["prompt"], engine.ready["threads"]
    llama = Worker("llamacpp-worker", ["--threads", str(threads)])
    server = (LlamaServer(server_binary, model_gguf(args.model), threads, args.streams)
              if server_binary else None)
    if server is None:
        print("llama.cpp with concurrent streams skipped: no llama-server binary (make llamacpp, or set "
              "LLAMA_SERVER)", file=sys.stderr)
    many = f"{args.streams}_streams"
    sides = {
        "tunelab_single": lambda: engine.run(tokens=args.tokens, streams=1),
        "llamacpp_single": lambda: llama.run(prompt=prompt, tokens=args.tokens),
        f"tunelab_{many}": lambda: engine.run(tokens=args.tokens, streams=args.streams),
        "tunelab_cold_prompt": lambda: {"ttft_s": engine.run(cold=True)["ttft_s"]},
        "llamacpp_cold_prompt": lambda: {"ttft_s": llama.run(prompt=prompt, tokens=1, cold=True)["ttft_s"]},
    }
    if server:
        sides["llamacpp_server_single"] = lambda: server.run(prompt, args.tokens, 1)
        sides[f"llamacpp_server_{many}"] = lambda: server.run(prompt, args.tokens, args.streams)
        server.run(prompt, 4, args.streams)  # warm-up: every slot holds the prompt, as the engine's cache does
    llama.run(prompt=prompt, tokens=4)  # warm-up
    runs: dict[str, list[dict]] = {name: [] for name in sides}
    try:
        for round_ in range(args.rounds):
            for kind in ("single", many, "cold_prompt"):  # like for like: tunelab then llama.cpp, or the reverse
                names = [name for name in sides if name.endswith(kind)]
                for name in names if round_ % 2 == 0 else reversed(names):
                    runs[name].append(sides[name]())
                    shown = {k: v for k, v in runs[name][-1].items() if k != "tokens"}
                    print(f"round {round_ + 1}: {name} {json.dumps(shown)}", file=sys.stderr, flush=True)
    finally:
        for closing in (engine, llama, server):
            if closing is not None:
                closing.close()
    report = {"threads": threads, "load_average": [round(load_before, 1), round(os.getloadavg()[0], 1)],
              "decode_weights": engine.ready["decode_weights"],
              "gguf": model_gguf(args.model).name, "llama_cpp_python": llama.ready["llama_cpp_python"],
              "llamacpp_threads": llama.ready["threads"], "rounds": args.rounds,
              **{name: summarize(results) for name, results in runs.items()}}
    ours, theirs = runs["tunelab_single"][0]["tokens"], runs["llamacpp_single"][0]["tokens"]
    report["greedy_tokens_alike"] = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b),
                                         min(len(ours), len(theirs)))

    def ratio(tunelab: str, llamacpp: str, key: str) -> float:
        return round(report[tunelab][key] / report[llamacpp][key], 2)

    report["ratios_tunelab_over_llamacpp"] = {
        "single_tokens_per_s": ratio("tunelab_single", "llamacpp_single", "tokens_per_s"),
        "single_decode_tokens_per_s": ratio("tunelab_single", "llamacpp_single", "decode_tokens_per_s"),
        "cold_prompt_ttft": ratio("tunelab_cold_prompt", "llamacpp_cold_prompt", "ttft_s"),
    }
    if server:
        report["ratios_tunelab_over_llamacpp"].update({
            f"{many}_tokens_per_s": ratio(f"tunelab_{many}", f"llamacpp_server_{many}", "tokens_per_s"),
            f"{many}_ttft": ratio(f"tunelab_{many}", f"llamacpp_server_{many}", "ttft_s"),
            f"{many}_last_ttft": ratio(f"tunelab_{many}", f"llamacpp_server_{many}", "last_ttft_s"),
        })
    return report


def summarize(results: list[dict]) -> dict:
    """Each timing's median over the runs, and its range when there are several."""
    summary = {}
    for key in results[0]:
        values = [r[key] for r in results if isinstance(r.get(key), (int, float))]
        if key == "tokens" or not values:
            continue
        summary[key] = round(statistics.median(values), 3)
        if len(values) > 1:
            summary[key + "_range"] = [min(values), max(values)]
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    parser.add_argument("--model", default="SmolLM2-135M-Instruct")
    parser.add_argument("--tokens", type=int, default=None, help="new tokens per answer (default 128; 16 with "
                        "--quick)")
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--weights", default="auto", choices=("auto", "int4", "int8", "fp32"))
    parser.add_argument("--generic", action="store_true", help="decode through transformers' forward instead of "
                        "tunelab's Llama decoder")
    parser.add_argument("--quality-rows", type=int, default=None, help="validation conversations for the quality "
                        "check (default 8; 0 skips it, as --quick does)")
    parser.add_argument("--kernels-off-too", action="store_true", help="run the engine once more with "
                        "TUNELAB_KERNELS=off (PyTorch's kernels only) and compare")
    parser.add_argument("--rounds", type=int, default=None, help="turns each side takes in the comparison with "
                        "llama.cpp (default 3; 1 with --quick)")
    parser.add_argument("--llamacpp-only", action="store_true", help="only the comparison with llama.cpp")
    parser.add_argument("--no-llamacpp", action="store_true", help="leave llama.cpp out")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 16 tokens, one round, no quality check")
    parser.add_argument("--threads", type=int, help="threads for the engine and llama.cpp alike in the "
                        "comparison (default: the cores this process may use, as `tunelab serve` takes)")
    parser.add_argument("--side", choices=("generate", "engine", "engine-worker", "llamacpp-worker"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.tokens = args.tokens or (16 if args.quick else 128)
    args.quality_rows = args.quality_rows if args.quality_rows is not None else (0 if args.quick else 8)
    args.rounds = args.rounds or (1 if args.quick else 3)
    if args.side in ("engine-worker", "llamacpp-worker"):
        (engine_worker if args.side == "engine-worker" else llamacpp_worker)(args)
        os._exit(0)
    if args.side:
        print(json.dumps(generate_side(args) if args.side == "generate" else engine_side(args)), flush=True)
        os._exit(0)  # the engine's daemon thread may be inside torch: no interpreter teardown around it
    report = {"model": args.model, "new_tokens": args.tokens}
    if not args.llamacpp_only:
        report.update(variants(args))
    missing = "left out (--no-llamacpp)" if args.no_llamacpp else llamacpp_missing(args.model)
    if missing:
        print(f"llama.cpp comparison skipped: {missing}", file=sys.stderr)
    else:
        report["llamacpp"] = compare_with_llamacpp(args)
    print(json.dumps(report, indent=2))


def variants(args) -> dict:
    """transformers' generate() and the engine's variants, each side in its own process, one after the other."""
    report = {}
    runs = [("generate", {}), ("engine", {})] + ([("engine", {"TUNELAB_KERNELS": "off"})] if args.kernels_off_too
                                                   else [])
    for side, env in runs:
        done = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--side", side], capture_output=True,
                              text=True, env={**os.environ, **env})
        if done.returncode:
            sys.exit(f"the {side} side failed:\n{done.stderr[-3000:]}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
        report.update({"kernels_off": result} if env else result)
    single, generate = report["tunelab_single"]["tokens_per_s"], report["transformers_generate"]["tokens_per_s"]
    report["single_vs_generate"] = round(single / generate, 2)
    report["aggregate_vs_single"] = round(report[f"tunelab_{args.streams}_streams"]["tokens_per_s"] / single, 2)
    report["mixed_aggregate_vs_single"] = round(
        report[f"tunelab_{args.streams}_streams_half_adapter"]["tokens_per_s"] / single, 2)
    if args.kernels_off_too:  # tokens/s with the kernels as found over tokens/s with PyTorch's only
        off = report["kernels_off"]
        report["kernels_vs_off"] = {key: round(report[key]["tokens_per_s"] / off[key]["tokens_per_s"], 2)
                                    for key in ("tunelab_single", f"tunelab_{args.streams}_streams")}
    return report


if __name__ == "__main__":
    main()
