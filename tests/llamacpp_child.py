"""llama.cpp (llama-cpp-python) run in a child process for the tests: loaded into the pytest process beside torch,
its threads abort the interpreter at exit once torch has trained there.

    python tests/llamacpp_child.py logits BASE.gguf [LORA.gguf|-] IDS_JSON        → every position's logits
    python tests/llamacpp_child.py greedy BASE.gguf [LORA.gguf|-] IDS_JSON N      → N greedy tokens
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path


def available() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


def run(command: str, base: Path, lora: Path | None, ids: list[int], *extra) -> list:
    done = subprocess.run([sys.executable, __file__, command, str(base), str(lora) if lora else "-",
                           json.dumps(ids), *map(str, extra)], capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"llama.cpp's child process failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout)


def _main(command: str, base: str, lora: str, ids_json: str, *extra: str) -> None:
    import llama_cpp

    ids = json.loads(ids_json)
    llm = llama_cpp.Llama(model_path=base, lora_path=None if lora == "-" else lora, n_ctx=256, n_threads=2,
                          logits_all=True, verbose=False)  # without logits_all it keeps no scores
    try:
        llm.eval(ids)
        if command == "logits":
            result = llm.scores[:len(ids)].tolist()
        else:
            result = []
            for _ in range(int(extra[0])):
                result.append(int(llm.scores[llm.n_tokens - 1].argmax()))
                llm.eval(result[-1:])
    finally:
        llm.close()
    print(json.dumps(result))


if __name__ == "__main__":
    _main(*sys.argv[1:])
