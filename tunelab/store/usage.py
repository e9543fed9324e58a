"""What the service holds and the disk it takes, by kind, in the order clean-up deletes it: deployments, exports,
fine-tuned models, jobs (with their checkpoints and run directories), files, comparisons, stored chat completions, evals
(with their runs and output items). Exports go before the
models because a running export reads its model's weights; a finished one depends on nothing. Base models are
listed apart: clean-up keeps them (they are a cache of the installed packages)."""

from __future__ import annotations

import json
import os
from pathlib import Path


def disk_bytes(path: Path, skip: set[Path] = frozenset()) -> int:
    """Bytes of the files under `path` (or of `path` itself), leaving out the directories in `skip`."""
    if path.is_file():
        return path.stat().st_size
    total = 0
    for root, dirs, files in os.walk(path):
        dirs[:] = [d for d in dirs if Path(root, d) not in skip]
        total += sum((Path(root) / f).stat().st_size for f in files if (Path(root) / f).is_file())
    return total


def usage(db, models_dir: Path, exports_dir: Path) -> dict:
    rows = db.query("SELECT id, job_id, path FROM models ORDER BY created_at")
    models = [{"id": r["id"], "job_id": r["job_id"], "bytes": disk_bytes(Path(r["path"]))} for r in rows]
    model_dirs = {Path(r["path"]) for r in rows}  # left out of their job's run directory: counted once
    jobs = []
    for r in db.query("SELECT id, status, run_dir, fine_tuned_model FROM jobs ORDER BY created_at"):
        run_dir = Path(r["run_dir"]) if r["run_dir"] else None
        size = disk_bytes(run_dir, model_dirs) if run_dir and run_dir.exists() else 0
        log = run_dir.parent / f"{r['id']}.log" if run_dir else None
        size += log.stat().st_size if log and log.is_file() else 0
        checkpoints = db.query("SELECT COUNT(*) AS n FROM checkpoints WHERE job_id = ?", (r["id"],))[0]["n"]
        jobs.append({"id": r["id"], "status": r["status"], "checkpoints": checkpoints, "bytes": size})
    files = [{"id": r["id"], "filename": r["filename"], "purpose": r["purpose"], "bytes": r["bytes"]}
             for r in db.query("SELECT id, filename, purpose, bytes FROM files ORDER BY created_at")]
    exports = [{"id": r["id"], "model": r["model"], "format": r["format"], "quantization": r["quant"],
                "ollama": bool(r["ollama"]), "status": r["status"], "files": len(json.loads(r["files"] or "[]")),
                "bytes": disk_bytes(exports_dir / r["id"])}  # no directory (not succeeded): 0
               for r in db.query("SELECT id, model, format, quant, ollama, status, files FROM exports ORDER BY rowid")]
    deployments = [{"name": r["name"], "model": r["model"]}
                   for r in db.query("SELECT name, model FROM deployments ORDER BY created_at")]
    evaluations = [{"id": r["id"], "status": r["status"]}
                   for r in db.query("SELECT id, status FROM evaluations ORDER BY created_at")]
    stored = [{"id": r["id"], "model": r["model"]}
              for r in db.query("SELECT id, model FROM stored_completions ORDER BY created_at, rowid")]
    evals = [{"id": r["id"], "name": r["name"], "runs": r["runs"]} for r in db.query(
        "SELECT e.id, e.name, (SELECT COUNT(*) FROM eval_runs r WHERE r.eval_id = e.id) AS runs FROM evals e "
        "ORDER BY e.created_at, e.rowid")]
    base = [{"name": p.name, "bytes": disk_bytes(p)} for p in sorted(models_dir.iterdir()) if p.is_dir()] \
        if models_dir.is_dir() else []
    removable = sum(x["bytes"] for group in (exports, models, jobs, files) for x in group)
    return {"deployments": deployments, "exports": exports, "models": models, "jobs": jobs, "files": files,
            "evaluations": evaluations, "stored_completions": stored, "evals": evals, "base_models": base, "removable_bytes": removable,
            "database_bytes": db.bytes()}
