"""Decode speed: tunelab's engine vs transformers `generate()` on the same model, prompt and greedy decoding.

    .venv/bin/python bench/decode.py                  # SmolLM2-135M-Instruct, 128 new tokens, 8 streams
    .venv/bin/python bench/decode.py --weights fp32   # the engine without 4-bit/8-bit decode weights
    .venv/bin/python bench/decode.py --generic        # through transformers' forward, not the Llama decoder
    .venv/bin/python bench/decode.py --kernels-off-too  # the engine once more with PyTorch's kernels only

The prompt is the lab's system message plus its first question. Both sides generate exactly `--tokens` tokens
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
"""

from __future__ import annotations

import argparse
import json
import os
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

from tunelab.models.catalog import resolve_model  # noqa: E402  (no torch import: see engine_side)
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
               every: int = 2, temperature: float = 0, top_p: float = 1.0) -> dict:
    """`streams` answers at once; with `adapter`, every `every`-th one goes through it (1: all of them)."""
    from tunelab.inference.engine import SamplingParams

    finished = threading.Semaphore(0)
    firsts: list[float] = []
    started = time.perf_counter()

    def listener():
        seen = []

        def on_event(kind, payload):
            if kind == "delta" and not seen:
                seen.append(1)
                firsts.append(time.perf_counter() - started)
            if kind in ("done", "error"):
                finished.release()
        return on_event

    sampling = [SamplingParams(max_tokens=tokens, temperature=temperature, top_p=top_p, seed=i)
                for i in range(streams)]
    generations = [engine.submit(prompt, params, adapter=adapter if (i + 1) % every == 0 else None,
                                 end_ids=set(), on_event=listener())
                   for i, params in enumerate(sampling)]
    for _ in range(streams):
        finished.acquire()
    seconds = time.perf_counter() - started
    produced = sum(len(g.tokens) for g in generations)
    report = {"ttft_s": round(min(firsts), 3), "tokens_per_s": round(produced / seconds, 1)}
    if streams > 1:  # the stream that waited longest for its first token
        report["last_ttft_s"] = round(max(firsts), 3)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="SmolLM2-135M-Instruct")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--weights", default="auto", choices=("auto", "int4", "int8", "fp32"))
    parser.add_argument("--generic", action="store_true", help="decode through transformers' forward instead of "
                        "tunelab's Llama decoder")
    parser.add_argument("--quality-rows", type=int, default=8, help="validation conversations for the quality "
                        "check (0 skips it)")
    parser.add_argument("--kernels-off-too", action="store_true", help="run the engine once more with "
                        "TUNELAB_KERNELS=off (PyTorch's kernels only) and compare")
    parser.add_argument("--side", choices=("generate", "engine"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        print(json.dumps(generate_side(args) if args.side == "generate" else engine_side(args)), flush=True)
        os._exit(0)  # the engine's daemon thread may be inside torch: no interpreter teardown around it
    report = {"model": args.model, "new_tokens": args.tokens}
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
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
