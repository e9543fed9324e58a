"""A fine-tune's LoRA adapter as llama.cpp's LoRA GGUF (`--format gguf-lora`), proven in llama.cpp itself: the
base model's GGUF (tunelab's own gguf export) with the adapter GGUF attached gives the logits of transformers'
base + PEFT adapter, on tiny random models of each architecture with random, non-zero B matrices; the real
llama-server serves base and fine-tune from one process, the adapter chosen per request; what llama.cpp cannot
take is refused by name, leaving nothing behind."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import llamacpp_child
import tiny_models
from conftest import free_port
from test_export import CHAT, Lab, base_plus_adapter, logits, prompt_ids
from tunelab.errors import InvalidRequest
from tunelab.export import ExportRequest, export_model
from tunelab.export.gguf_lora import write_lora_gguf

ARCHS = ("llama", "qwen2", "gemma3")
LLAMA_SERVER = Path(sys.executable).parent / "llama-server"


def llama_cpp() -> None:
    if not llamacpp_child.available():
        pytest.skip("llama-cpp-python is not installed (make llamacpp installs it)")


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """Per architecture: a tiny random model and a LoRA adapter on all its linear layers but the head, with random
    non-zero B matrices (a fresh adapter's B is zero: it would change nothing), rank 4, alpha 8."""
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("lora-gguf-models")
    found = {}
    for arch in ARCHS:
        base = tiny_models.build(arch, root / arch, layers=6 if arch == "gemma3" else 2)
        adapter = adapter_of(base, root / f"{arch}-run" / "adapter", seed=1, target_modules="all-linear")
        AutoTokenizer.from_pretrained(base).save_pretrained(adapter)  # as tunelab's trainer saves a fine-tune
        found[arch] = (base, adapter)
    return found


@pytest.fixture(scope="module")
def exported(built, tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """Per architecture: the base model's f16 GGUF and the fine-tune's LoRA GGUF, each exported by tunelab."""
    home = tmp_path_factory.mktemp("lora-gguf-home")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("TUNELAB_HOME", str(home))
        lab = Lab(home, built, ARCHS)
        files = {}
        for arch in ARCHS:
            base_out, lora_out = home / f"{arch}-base", home / f"{arch}-lora"
            export_model(lab.registry, f"tiny-{arch}", ExportRequest("gguf", quant="f16"), base_out)
            listed = export_model(lab.registry, lab.models[arch], ExportRequest("gguf-lora"), lora_out)
            assert [f.name for f in listed] == [f"tiny-{arch}-export-{arch}-lora-f16.gguf"]
            files[arch] = (next(base_out.glob("*.gguf")), lora_out / listed[0].name)
    return files


def llama_logits(base_gguf: Path, lora_gguf: Path | None, ids: list[int]) -> torch.Tensor:
    """Every position's logits from llama.cpp on the base GGUF, with the LoRA GGUF attached when given."""
    return torch.tensor(llamacpp_child.run("logits", base_gguf, lora_gguf, ids), dtype=torch.float32)


@pytest.mark.parametrize("arch", ARCHS)
def test_the_file_is_a_lora_adapter_of_the_base_architecture_named_as_the_base_gguf(arch, built, exported):
    """What llama.cpp's loader checks: general.type, adapter.type, the alpha, the base's architecture, and one
    lora_a (rank × in) and lora_b (out × rank) pair per base tensor the adapter targets, under the base's name."""
    from gguf import GGMLQuantizationType, GGUFReader

    base_gguf, lora_gguf = exported[arch]
    lora, base = GGUFReader(lora_gguf), GGUFReader(base_gguf)

    def field(reader, key):
        return reader.fields[key].contents()

    assert field(lora, "general.type") == "adapter" and field(lora, "adapter.type") == "lora"
    assert field(lora, "adapter.lora.alpha") == 8.0
    assert field(lora, "general.architecture") == field(base, "general.architecture")
    assert field(lora, "general.name") == f"ft:tiny-{arch}:local:export:{arch}"
    shapes = {t.name: tuple(int(d) for d in reversed(t.shape)) for t in lora.tensors}  # GGUF lists ne[0] first
    base_shapes = {t.name: tuple(int(d) for d in reversed(t.shape)) for t in base.tensors}
    layers = 6 if arch == "gemma3" else 2
    targets = [f"blk.{i}.{name}.weight" for i in range(layers)
               for name in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")]
    assert sorted(shapes) == sorted(f"{t}.lora_{ab}" for t in targets for ab in "ab")
    for target in targets:
        out_features, in_features = base_shapes[target]
        assert shapes[f"{target}.lora_a"] == (4, in_features) and shapes[f"{target}.lora_b"] == (out_features, 4)
    assert {t.tensor_type for t in lora.tensors} == {GGMLQuantizationType.F16}


@pytest.mark.parametrize("arch", ARCHS)
def test_llama_cpp_with_the_lora_gguf_gives_base_plus_adapter_logits(arch, built, exported):
    from transformers import AutoTokenizer

    llama_cpp()
    base_gguf, lora_gguf = exported[arch]
    tokenizer = AutoTokenizer.from_pretrained(built[arch][1])
    ids = prompt_ids(tokenizer)
    served = base_plus_adapter(*built[arch])
    expected = logits(served, ids)
    with served.disable_adapter():
        base_expected = logits(served, ids)
    assert (expected - base_expected).abs().max() > 0.5  # the adapter changes the answer
    got = llama_logits(base_gguf, lora_gguf, ids[0].tolist())
    base_got = llama_logits(base_gguf, None, ids[0].tolist())
    # the base GGUF holds f16 weights and the adapter f16 matrices: hundredths of a logit
    torch.testing.assert_close(base_got, base_expected, atol=0.05, rtol=0)
    torch.testing.assert_close(got, expected, atol=0.05, rtol=0)


def llama_greedy(base_gguf: Path, lora_gguf: Path | None, ids: list[int], n: int) -> list[int]:
    """llama.cpp's n greedy tokens after the prompt `ids` (end-of-turn included: the test compares, not chats)."""
    return llamacpp_child.run("greedy", base_gguf, lora_gguf, ids, n)


def test_llama_server_serves_base_and_fine_tune_from_one_process_the_adapter_chosen_per_request(built, exported,
                                                                                                  tmp_path):
    """The deployment the format is for: one llama-server on the base GGUF with the adapter loaded; a request that
    gives the adapter scale 1 gets the fine-tune's greedy answer and one that gives it 0 the base's, back and forth
    in the same process (the prompt cache of the other adapter is not reused).

    --lora-init-without-apply does not make the base the default of a request that names no adapter: the server
    still lists the adapter at scale 1 and applies it to such a request. And a request without "lora" reuses the
    slot's cached prompt whatever adapter computed it (seen on this build: an answer that is neither model's), so
    a deployment names every adapter's scale in every request."""
    import httpx2 as httpx
    from transformers import AutoTokenizer

    if not LLAMA_SERVER.is_file():
        pytest.skip(f"{LLAMA_SERVER} is not built (make llamacpp builds it)")
    base_gguf, lora_gguf = exported["llama"]
    tokenizer = AutoTokenizer.from_pretrained(built["llama"][1])
    ids = prompt_ids(tokenizer)[0].tolist()
    n = 12
    adapted, plain = llama_greedy(base_gguf, lora_gguf, ids, n), llama_greedy(base_gguf, None, ids, n)
    assert adapted != plain  # otherwise the check below could not tell them apart
    port = free_port()
    log = (tmp_path / "llama-server.log").open("w")
    server = subprocess.Popen([str(LLAMA_SERVER), "-m", str(base_gguf), "--lora", str(lora_gguf),
                               "--lora-init-without-apply", "--host", "127.0.0.1", "--port", str(port), "-t", "2",
                               "-c", "512", "-np", "1", "--no-webui", "--jinja"], stdout=log, stderr=subprocess.STDOUT)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            deadline = time.monotonic() + 30
            while True:
                assert server.poll() is None, (tmp_path / "llama-server.log").read_text()[-2000:]
                try:
                    if http.get("/health").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "llama-server did not become ready in 30 s"
                time.sleep(0.2)
            adapters = http.get("/lora-adapters").json()
            assert [(a["id"], Path(a["path"]).name, a["scale"]) for a in adapters] == [(0, lora_gguf.name, 1.0)]

            def complete(**extra) -> list[int]:
                reply = http.post("/completion", json={"prompt": ids, "n_predict": n, "temperature": 0,
                                                       "ignore_eos": True, "return_tokens": True, **extra})
                assert reply.status_code == 200, reply.text
                return reply.json()["tokens"]

            assert complete() == adapted  # no "lora": the server's own scales, 1 (see the docstring)
            for scale, expected in ((0.0, plain), (1.0, adapted), (0.0, plain), (1.0, adapted)):
                assert complete(lora=[{"id": 0, "scale": scale}]) == expected, f"scale {scale}"
            # the OpenAI chat route takes the same field; the file's chat template renders the same prompt. (The
            # random model's bytes need not end in whole UTF-8 characters, which the server holds back: "\ufffd")
            texts = {scale: tokenizer.decode(tokens).rstrip("\ufffd") for scale, tokens in ((1.0, adapted),
                                                                                            (0.0, plain))}
            assert texts[1.0] != texts[0.0]
            for scale, expected in texts.items():
                reply = http.post("/v1/chat/completions", json={
                    "messages": CHAT, "max_tokens": n, "temperature": 0, "ignore_eos": True,
                    "lora": [{"id": 0, "scale": scale}]})
                assert reply.status_code == 200, reply.text
                assert reply.json()["choices"][0]["message"]["content"].rstrip("\ufffd") == expected, f"scale {scale}"
    finally:
        server.terminate()
        server.wait(timeout=10)
        log.close()


def adapter_of(base: Path, out: Path, seed: int = 2, **lora) -> Path:
    """A LoRA adapter on `base` (rank 4, alpha 8 unless given) with random non-zero B matrices, saved as PEFT saves
    it."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    peft = get_peft_model(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32),
                          LoraConfig(task_type="CAUSAL_LM", **{"r": 4, "lora_alpha": 8, **lora}))
    with torch.no_grad():
        for name, param in peft.named_parameters():
            if "lora_B" in name or "lora_embedding_B" in name:
                param.normal_(0, 0.05)
    peft.save_pretrained(out, safe_serialization=True)
    return out


def test_rslora_and_per_module_ranks_and_alphas_apply_as_peft_applies_them(built, exported, tmp_path):
    """llama.cpp scales every pair by alpha / rank: an adapter whose scale PEFT computes otherwise (rsLoRA's
    alpha / sqrt(rank), a rank and an alpha of its own for some modules) still gives PEFT's logits."""
    from transformers import AutoTokenizer

    llama_cpp()
    base, _ = built["qwen2"]
    adapter = adapter_of(base, tmp_path / "adapter", r=4, lora_alpha=8, target_modules="all-linear", use_rslora=True,
                         rank_pattern={"q_proj": 8}, alpha_pattern={"down_proj": 3})
    lora_gguf = write_lora_gguf(adapter, base, tmp_path / "adapter.gguf", dtype="f32")
    ids = prompt_ids(AutoTokenizer.from_pretrained(base))
    expected = logits(base_plus_adapter(base, adapter), ids)
    got = llama_logits(exported["qwen2"][0], lora_gguf, ids[0].tolist())
    torch.testing.assert_close(got, expected, atol=0.05, rtol=0)


def test_what_llama_cpp_cannot_take_is_refused_by_name_and_leaves_nothing(built, home, tmp_path):
    base, adapter = built["llama"]
    lab = Lab(home, built, ("llama",))
    out = tmp_path / "out"
    out.mkdir()

    def refused(call, *words: str, param: str = "model"):
        with pytest.raises(InvalidRequest) as caught:
            call()
        assert caught.value.param == param
        for word in words:
            assert word in str(caught.value)
        assert list(out.iterdir()) == []  # nothing half-written beside the target either

    # a base model and a full fine-tune have no adapter, through the export and the function itself
    refused(lambda: export_model(lab.registry, "tiny-llama", ExportRequest("gguf-lora"), out / "x"), "tiny-llama",
            "base model")
    lab.add("ft:tiny-llama:local:full:1", "tiny-llama", base, method="full")
    refused(lambda: export_model(lab.registry, "ft:tiny-llama:local:full:1", ExportRequest("gguf-lora"), out / "x"),
            "ft:tiny-llama:local:full:1", "full fine-tune", param="format")
    refused(lambda: write_lora_gguf(base, base, out / "x.gguf"), str(base), "whole model")
    # targets llama.cpp cannot apply, each named
    embeddings = adapter_of(base, tmp_path / "embed", target_modules=["q_proj", "embed_tokens"])
    refused(lambda: write_lora_gguf(embeddings, base, out / "x.gguf"), "model.embed_tokens")
    head = adapter_of(base, tmp_path / "head", target_modules=["q_proj"], modules_to_save=["lm_head"])
    refused(lambda: write_lora_gguf(head, base, out / "x.gguf"), "lm_head")
    tied_head = adapter_of(base, tmp_path / "tied-head", target_modules=["q_proj", "lm_head"])
    refused(lambda: write_lora_gguf(tied_head, base, out / "x.gguf"), "lm_head", "tied")
    dora = adapter_of(base, tmp_path / "dora", target_modules=["v_proj"], use_dora=True)
    refused(lambda: write_lora_gguf(dora, base, out / "x.gguf"), "DoRA")
    # an adapter of another model: the six-layer Gemma 3's on the two-layer Llama
    refused(lambda: write_lora_gguf(built["gemma3"][1], base, out / "x.gguf"), "model.layers.2.mlp.down_proj",
            "another model")
    refused(lambda: write_lora_gguf(adapter, base, out / "x.gguf", dtype="q4_0"), "q4_0", param="quant")
    (out / "taken.gguf").write_text("")
    with pytest.raises(InvalidRequest) as caught:
        write_lora_gguf(adapter, base, out / "taken.gguf")
    assert caught.value.param == "out" and (out / "taken.gguf").read_text() == ""


def test_the_cli_writes_the_lora_gguf_and_says_how_llama_server_uses_it(built, home, tmp_path, capsys, monkeypatch):
    from test_cli import tunelab

    lab = Lab(home, built, ("qwen2",))
    model = lab.models["qwen2"]
    monkeypatch.chdir(tmp_path)
    code, output = tunelab(capsys, "export", model, "--format", "gguf-lora")
    assert code == 0, output
    made = tmp_path / "exports" / f"{model.replace(':', '-')}-gguf-lora"
    assert [p.name for p in made.iterdir()] == ["tiny-qwen2-export-qwen2-lora-f16.gguf"]
    assert "tunelab export tiny-qwen2 --format gguf" in output
    assert "--lora" in output and '"lora": [{"id": 0, "scale": 1.0}]' in output
    code, output = tunelab(capsys, "export", model, "--format", "gguf-lora", "--quant", "q8_0", "--out", "other")
    assert code == 2 and "--quant applies to --format gguf only" in output and not (tmp_path / "other").exists()
