"""The load benchmark's short run (`bench/load.py`): concurrent streaming clients through the stock `openai` SDK
against a real `tunelab serve` process, on one deployment with a token limit.

Ten clients for twelve seconds against a deployment of capacity 2 (2,000 tokens a minute, 2 requests per 10
seconds), each request 666 tokens (the prompt and max_tokens): the request limit alone would let 4 in within the
two 10-second windows the run spans (2,664 tokens), the token limit lets 3 (1,998), and the clients ask for far
more. Asserted: the tokens admitted are within 5% of the limit, no server error, every stream either completed or
was refused with a 429 before its first byte, and the server's memory stayed bounded. More clients than the
request limit admits, so admission never waits on generation (the machine may be busy). The full run (50 clients,
two minutes) is `python bench/load.py`.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import load  # noqa: E402


def test_streaming_clients_get_the_token_limit_and_nothing_breaks(tmp_path, tiny_model):
    report = load.run(clients=10, duration=12, capacity=2, request_tokens=666, model=tiny_model, workdir=tmp_path)
    counts = report.counts()
    print(report.table())
    (admitted,) = report.minutes()
    assert abs(admitted - report.limit) <= load.TOLERANCE * report.limit, report.table()
    assert counts["refused"] > 0, "the clients never met the limit: the run proves nothing"
    assert counts["broken"] == 0 and counts["failed"] == 0 and report.server_errors() == 0, report.table()
    assert counts["completed"] + counts["refused"] == len(report.outcomes)
    memory = report.memory()
    assert memory["end_mib"] <= memory["start_mib"] * 1.5 + 64, report.table()
    assert report.problems() == []
