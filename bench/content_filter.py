"""Precision and recall of the content filter on a labelled set, and the leave-one-out choice of its thresholds.

    python bench/content_filter.py            # the figures in docs/service.md
    python bench/content_filter.py --tune     # re-derive THRESHOLD and MARGIN from the exemplars alone
    python bench/content_filter.py --build-corpus  # embed tunelab/safety/everyday_chat.jsonl (after editing it)

Besides the labelled set, it counts what the Default policy blocks in travel chat the filter was not built from
(the filter holds no travel data): the user turns of examples/travel/valid.jsonl and prompts.jsonl behind the
lab's system message (as the prompt filter sees them), and the replies of valid.jsonl (as the completion filter
does).

The labelled set (tests/data/content_filter_eval.jsonl) shares no sentence with the exemplars the classifier
compares against. "Blocked" means what the Default policy blocks: medium or high.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tunelab.safety.classifier import (CATEGORIES, EVERYDAY_CHAT, EVERYDAY_VECTORS, EXEMPLARS,  # noqa: E402
                                       SEVERITIES, Classifier, Embedder, embed_in_batches, load_exemplars,
                                       model_dir, texts_digest)

EVAL = ROOT / "tests" / "data" / "content_filter_eval.jsonl"


def blocked(severity: str) -> bool:
    return SEVERITIES.index(severity) >= SEVERITIES.index("medium")


def evaluate(classifier: Classifier, rows: list[dict]) -> dict:
    started = time.perf_counter()
    found = [classifier.classify(r["text"]) for r in rows]
    seconds = (time.perf_counter() - started) / len(rows)
    report = {"items": len(rows), "ms_per_item": round(seconds * 1000, 1), "categories": {}}
    for c in CATEGORIES:
        truth = [r["category"] == c and blocked(r["severity"]) for r in rows]
        said = [blocked(f[c]) for f in found]
        tp = sum(t and s for t, s in zip(truth, said))
        report["categories"][c] = {
            "positives": sum(truth), "precision": round(tp / max(1, sum(said)), 3),
            "recall": round(tp / max(1, sum(truth)), 3)}
    clean = [(r, f) for r, f in zip(rows, found) if r["category"] == "safe"]
    report["clean_blocked"] = sum(any(blocked(s) for s in f.values()) for _, f in clean)
    report["clean_items"] = len(clean)
    report["false_alarms"] = [r["text"] for r, f in clean if any(blocked(s) for s in f.values())]
    harmful = [(r, f) for r, f in zip(rows, found) if r["category"] != "safe" and blocked(r["severity"])]
    report["harmful_blocked"] = f"{sum(blocked(f[r['category']]) for r, f in harmful)}/{len(harmful)}"
    return report


def tune(embedder: Embedder) -> tuple[float, float]:
    """Leave-one-out over the exemplars: each is judged by the others; pick the thresholds that block the most
    medium/high exemplars, a false alarm on a safe exemplar costing as much as three misses. (The safe exemplars
    are chosen to sound like harm, so this is stricter than real chat.)"""
    exemplars = load_exemplars(EXEMPLARS)
    base = Classifier(embedder, exemplars)
    similarity = base.vectors @ base.vectors.T
    best = None
    for threshold in [x / 100 for x in range(30, 71, 2)]:
        for margin in [x / 100 for x in range(0, 16, 1)]:
            base.threshold, base.margin = threshold, margin
            caught = false_alarms = 0
            for i, e in enumerate(exemplars):
                judged = base._judge(similarity[i], skip=i)
                if e.category == "safe":
                    false_alarms += any(blocked(s) for s in judged.values())
                elif blocked(e.severity):
                    caught += blocked(judged[e.category])
            score = (caught - 3 * false_alarms, -false_alarms, -threshold)
            if best is None or score > best[0]:
                best = (score, threshold, margin, caught, false_alarms)
    _, threshold, margin, caught, false_alarms = best
    print(f"leave-one-out: THRESHOLD={threshold} MARGIN={margin} catches {caught} medium/high exemplars, "
          f"{false_alarms} false alarms on safe exemplars")
    return threshold, margin


def travel_chat_blocked(classifier: Classifier) -> dict:
    """Clean travel chat: how much of it the Default policy would block."""
    SYSTEM = (ROOT / "examples" / "travel" / "system.txt").read_text().strip()

    travel = ROOT / "examples" / "travel"
    turns = [m for line in (travel / "valid.jsonl").read_text().splitlines() for m in json.loads(line)["messages"]]
    prompts = [json.loads(line)["messages"][-1]["content"] for line in (travel / "prompts.jsonl").read_text()
               .splitlines() if json.loads(line)["kind"] != "off_topic"]
    sets = {"valid user turns (with the system message)": [SYSTEM + "\n" + m["content"] for m in turns
                                                            if m["role"] == "user"],
            "prompts.jsonl travel and forbidden (with the system message)": [SYSTEM + "\n" + p for p in prompts],
            "valid replies": [m["content"] for m in turns if m["role"] == "assistant"]}
    report = {}
    for name, texts in sets.items():
        hits = [t for t in texts if any(blocked(s) for s in classifier.classify(t).values())]
        report[name] = {"blocked": len(hits), "items": len(texts),
                        "examples": [h.split("\n")[-1][:100] for h in hits[:3]]}
    return report


def build_corpus(embedder: Embedder) -> None:
    """Write the embeddings of the everyday chat exemplars (fp16), with the digest of the texts they come from."""
    from safetensors.torch import save_file

    exemplars = load_exemplars(EVERYDAY_CHAT)
    vectors = embed_in_batches(embedder, [e.text for e in exemplars]).half().contiguous()
    save_file({"vectors": vectors}, EVERYDAY_VECTORS,
              metadata={"model": "all-MiniLM-L6-v2", "texts_sha256": texts_digest(exemplars)})
    print(f"{len(exemplars)} exemplars of {EVERYDAY_CHAT.name} → {EVERYDAY_VECTORS.name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tune", action="store_true")
    parser.add_argument("--build-corpus", action="store_true")
    args = parser.parse_args()
    embedder = Embedder(model_dir())
    if args.build_corpus:
        return build_corpus(embedder)
    classifier = Classifier.default()
    if args.tune:
        classifier = Classifier(embedder, load_exemplars(EXEMPLARS))
        classifier.threshold, classifier.margin = tune(embedder)
    rows = [json.loads(line) for line in EVAL.read_text().splitlines() if line.strip()]
    print(json.dumps({**evaluate(classifier, rows), "travel_chat": travel_chat_blocked(classifier)}, indent=2))


if __name__ == "__main__":
    main()
