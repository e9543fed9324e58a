"""Evals, their runs and the runs' output items as they are stored (the `evals`, `eval_runs` and
`eval_output_items` tables). A run moves queued → in_progress → completed | failed | canceled, and only forward:
a run canceled while its last item was graded stays canceled. A run the server was stopped in the middle of is
marked failed at the next start (`recover`). Deleting an eval deletes its runs and their items, in one
transaction.

Lists page the cloud's way: `after` is the id of the last object of the previous page, `order` by creation.
Records come back as plain dicts with their JSON columns decoded; the API shapes them.
"""

from __future__ import annotations

import json
import secrets
import time

from ..errors import InvalidRequest, NotFound
from .db import Database

UNFINISHED = ("queued", "in_progress")
JSON_COLUMNS = ("metadata", "data_source_config", "testing_criteria", "data_source", "summary", "datasource_item",
                "results", "sample")


class Evals:
    def __init__(self, db: Database):
        self.db = db

    # ------------------------------------------------------------------------------------------------ evals

    def add(self, name: str, metadata: dict | None, data_source_config: dict, testing_criteria: list) -> dict:
        eval_id = f"eval_{secrets.token_hex(12)}"
        now = int(time.time())
        with self.db.write() as conn:
            conn.execute("INSERT INTO evals (id, name, metadata, data_source_config, testing_criteria, created_at, "
                         "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                         (eval_id, name, _dump(metadata), json.dumps(data_source_config), json.dumps(testing_criteria),
                          now, now))
        return self.get(eval_id)

    def get(self, eval_id: str) -> dict:
        rows = self.db.query("SELECT * FROM evals WHERE id = ?", (eval_id,))
        if not rows:
            raise NotFound(f"no eval {eval_id!r}", param="eval_id")
        return _record(rows[0])

    def list(self, *, after: str | None, limit: int, order: str, order_by: str = "created_at") -> tuple[list, bool]:
        return self._page("evals", "", (), after, limit, order, order_by)

    def update(self, eval_id: str, *, name: str | None = None, metadata: dict | None = None) -> dict:
        self.get(eval_id)
        with self.db.write() as conn:
            if name is not None:
                conn.execute("UPDATE evals SET name = ? WHERE id = ?", (name, eval_id))
            if metadata is not None:
                conn.execute("UPDATE evals SET metadata = ? WHERE id = ?", (_dump(metadata), eval_id))
            conn.execute("UPDATE evals SET updated_at = ? WHERE id = ?", (int(time.time()), eval_id))
        return self.get(eval_id)

    def delete(self, eval_id: str) -> None:
        """The eval, its runs and their output items (stop its running runs first)."""
        self.get(eval_id)
        with self.db.write() as conn:
            conn.execute("DELETE FROM eval_output_items WHERE eval_id = ?", (eval_id,))
            conn.execute("DELETE FROM eval_runs WHERE eval_id = ?", (eval_id,))
            conn.execute("DELETE FROM evals WHERE id = ?", (eval_id,))

    # ------------------------------------------------------------------------------------------------ runs

    def add_run(self, eval_id: str, *, name: str, metadata: dict | None, model: str | None, data_source: dict,
                report_url: str, summary: dict) -> dict:
        run_id = f"evalrun_{secrets.token_hex(12)}"
        with self.db.write() as conn:
            if conn.execute("SELECT 1 FROM evals WHERE id = ?", (eval_id,)).fetchone() is None:
                raise NotFound(f"no eval {eval_id!r}", param="eval_id")
            conn.execute("INSERT INTO eval_runs (id, eval_id, name, metadata, model, data_source, status, report_url, "
                         "summary, created_at) VALUES (?, ?, ?, ?, ?, ?, 'queued', ?, ?, ?)",
                         (run_id, eval_id, name, _dump(metadata), model, json.dumps(data_source),
                          report_url.format(run_id=run_id), json.dumps(summary), int(time.time())))
        return self.get_run(eval_id, run_id)

    def get_run(self, eval_id: str, run_id: str) -> dict:
        rows = self.db.query("SELECT * FROM eval_runs WHERE id = ? AND eval_id = ?", (run_id, eval_id))
        if not rows:
            raise NotFound(f"no run {run_id!r} in eval {eval_id!r}", param="run_id")
        return _record(rows[0])

    def list_runs(self, eval_id: str, *, after: str | None, limit: int, order: str,
                  status: str | None = None) -> tuple[list, bool]:
        self.get(eval_id)
        where, params = "eval_id = ?", (eval_id,)
        if status:
            where, params = where + " AND status = ?", params + (status,)
        return self._page("eval_runs", where, params, after, limit, order)

    def started(self, run_id: str) -> bool:
        """queued → in_progress; False when the run was canceled (or deleted) before it started."""
        with self.db.write() as conn:
            return conn.execute("UPDATE eval_runs SET status = 'in_progress' WHERE id = ? AND status = 'queued'",
                                (run_id,)).rowcount == 1

    def add_item(self, run_id: str, eval_id: str, index: int, status: str, item: dict, results: list, sample: dict,
                 summary: dict) -> bool:
        """One output item and the run's summary so far, together; False (nothing written) once the run has
        ended (canceled while this item was being graded)."""
        with self.db.write() as conn:
            if conn.execute("UPDATE eval_runs SET summary = ? WHERE id = ? AND status = 'in_progress'",
                            (json.dumps(summary), run_id)).rowcount != 1:
                return False
            conn.execute("INSERT INTO eval_output_items (id, run_id, eval_id, datasource_item_id, status, "
                         "datasource_item, results, sample, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                         (f"outputitem_{secrets.token_hex(12)}", run_id, eval_id, index, status, json.dumps(item),
                          json.dumps(results), json.dumps(sample), int(time.time())))
        return True

    def finish(self, run_id: str, status: str, summary: dict | None = None,
               error: tuple[str, str] | None = None) -> bool:
        """An unfinished run → completed, failed or canceled (with its final summary, or why it failed)."""
        code, message = error or (None, None)
        with self.db.write() as conn:
            changed = conn.execute(
                "UPDATE eval_runs SET status = ?, summary = COALESCE(?, summary), error_code = ?, error_message = ?, "
                "finished_at = ? WHERE id = ? AND status IN ('queued', 'in_progress')",
                (status, json.dumps(summary) if summary is not None else None, code, message, int(time.time()),
                 run_id)).rowcount
        return changed == 1

    def delete_run(self, eval_id: str, run_id: str) -> None:
        self.get_run(eval_id, run_id)
        with self.db.write() as conn:
            conn.execute("DELETE FROM eval_output_items WHERE run_id = ?", (run_id,))
            conn.execute("DELETE FROM eval_runs WHERE id = ?", (run_id,))

    def unfinished_runs(self, eval_id: str) -> list[str]:
        return [r["id"] for r in self.db.query(
            "SELECT id FROM eval_runs WHERE eval_id = ? AND status IN ('queued', 'in_progress')", (eval_id,))]

    def recover(self) -> None:
        """At start: runs the server was stopped in the middle of cannot go on; they fail, saying so."""
        with self.db.write() as conn:
            conn.execute("UPDATE eval_runs SET status = 'failed', error_code = 'server_stopped', error_message = "
                         "'the server stopped while this run was in progress; start a new run', finished_at = ? "
                         "WHERE status IN ('queued', 'in_progress')", (int(time.time()),))

    # ------------------------------------------------------------------------------------------------ output items

    def list_items(self, eval_id: str, run_id: str, *, after: str | None, limit: int, order: str,
                   status: str | None = None) -> tuple[list, bool]:
        self.get_run(eval_id, run_id)
        where, params = "run_id = ?", (run_id,)
        if status:
            where, params = where + " AND status = ?", params + (status,)
        return self._page("eval_output_items", where, params, after, limit, order)

    def get_item(self, eval_id: str, run_id: str, item_id: str) -> dict:
        rows = self.db.query("SELECT * FROM eval_output_items WHERE id = ? AND run_id = ? AND eval_id = ?",
                             (item_id, run_id, eval_id))
        if not rows:
            raise NotFound(f"no output item {item_id!r} in run {run_id!r}", param="output_item_id")
        return _record(rows[0])

    # ------------------------------------------------------------------------------------------------ paging

    def _page(self, table: str, where: str, params: tuple, after: str | None, limit: int, order: str,
              order_by: str = "created_at") -> tuple[list, bool]:
        """One page in insertion order (rowid: creation order, ties included), or by `updated_at` for evals."""
        clauses, params = ([where] if where else []), list(params)
        descending = order == "desc"
        key = "updated_at" if order_by == "updated_at" and table == "evals" else None
        if after:
            found = self.db.query(f"SELECT rowid, {key or 'rowid'} AS k FROM {table} WHERE id = ?", (after,))
            if not found:
                raise InvalidRequest(f"no object {after!r} to page after", param="after")
            if key:  # (updated_at, rowid) pairs: a total order even where times are equal
                clauses.append(f"({key}, rowid) {'<' if descending else '>'} (?, ?)")
                params += [found[0]["k"], found[0]["rowid"]]
            else:
                clauses.append(f"rowid {'<' if descending else '>'} ?")
                params.append(found[0]["rowid"])
        direction = "DESC" if descending else "ASC"
        sort = f"{key} {direction}, rowid {direction}" if key else f"rowid {direction}"
        rows = self.db.query(f"SELECT * FROM {table} {'WHERE ' + ' AND '.join(clauses) if clauses else ''} "
                             f"ORDER BY {sort} LIMIT ?", (*params, limit + 1))
        return [_record(r) for r in rows[:limit]], len(rows) > limit


def _dump(value) -> str | None:
    return None if value is None else json.dumps(value)


def _record(row) -> dict:
    found = dict(row)
    for column in JSON_COLUMNS:
        if column in found and found[column] is not None:
            found[column] = json.loads(found[column])
    return found
