"""Precision and recall of the content filter on a labelled set, and the leave-one-out choice of its thresholds.

    python bench/content_filter.py            # the figures in docs/service.md
    python bench/content_filter.py --tune     # re-derive THRESHOLD and MARGIN from the exemplars alone

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

from tunelab.safety.classifier import (CATEGORIES, EXEMPLARS, SEVERITIES, Classifier, Embedder,  # noqa: E402
                                       load_exemplars, model_dir)

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tune", action="store_true")
    args = parser.parse_args()
    embedder = Embedder(model_dir())
    classifier = Classifier(embedder, load_exemplars(EXEMPLARS))
    if args.tune:
        classifier.threshold, classifier.margin = tune(embedder)
    rows = [json.loads(line) for line in EVAL.read_text().splitlines() if line.strip()]
    print(json.dumps(evaluate(classifier, rows), indent=2))


if __name__ == "__main__":
    main()
