"""The pairs service: reads completed comparisons, mines their preference pairs (`evaluate/pairs.py`) and saves
pairs as a training file through the files store (the bytes and the row together, or nothing)."""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import InvalidRequest
from ...evaluate.pairs import Mined, mine, validate_rows
from ...evaluate.runs import Runs
from ...store.files import Files, check_new_file
from ..files.protocol import FileObject
from .protocol import PairList, PairsCreate, PairsFileCreate, PreferencePair


@dataclass
class PairsService:
    runs: Runs
    files: Files

    def create(self, body: PairsCreate) -> PairList:
        reports = []
        for evaluation_id in body.evaluations:
            found = self.runs.get(evaluation_id)  # unknown: a 404 naming it
            if found["status"] != "completed":
                why = "still running: mine pairs once it completes" if found["status"] == "running" else \
                    f"failed ({found['error']}); it has no answers to pair"
                raise InvalidRequest(f"the evaluation {evaluation_id} is {why}", param="evaluations")
            reports.append(found["report"])
        mined = mine(reports, checks=body.checks, max_per_prompt=body.max_per_prompt, names=body.evaluations)
        if not mined.pairs:
            raise InvalidRequest(mined.why_none(), param="evaluations")
        saved = None
        if body.save:
            validate_rows(mined.rows(), "evaluations")  # the saved file passes the data check, or nothing is saved
            saved = self._save(mined.jsonl(), body.filename or f"pairs-{body.evaluations[0]}.jsonl")
        return PairList(data=[PreferencePair(**p.to_dict()) for p in mined.pairs], summary=mined.summary,
                        file=saved)

    def save(self, body: PairsFileCreate) -> FileObject:
        """Reviewed pairs, checked line by line, as a training file."""
        rows = validate_rows(body.pairs)
        return self._save(Mined.lines(rows), body.filename or "pairs.jsonl")

    def _save(self, content: bytes, filename: str) -> FileObject:
        check_new_file("fine-tune", filename, len(content), file_param="filename", size_param="pairs")
        file_id, writer = self.files.writer()
        with writer:  # an error before the commit leaves nothing behind
            writer.write(content)
            return FileObject.of(self.files.add(file_id, writer, filename, "fine-tune"))
