"""The routes the studio needs, over HTTP against the real app: the page shell and its assets (no key, no data),
signing in (the link and the form) to an HttpOnly session and signing out, the session key of `tunelab serve`, a stored file's pre-flight report and the
fine-tuning defaults."""

from __future__ import annotations

import httpx2 as httpx
import openai
import pytest

from conftest import upload, varied_chats
from tunelab.api.auth import AuthenticationFailed, Keys
from tunelab.train.config import check_bounds

AUTH = {"Authorization": "Bearer test-key"}


def test_the_shell_and_its_assets_need_no_key_and_hold_no_data(service):
    root = service.base_url.removesuffix("/v1")
    shell = httpx.get(root + "/")
    assert shell.status_code == 200 and shell.headers["content-type"].startswith("text/html")
    assert "script-src" not in shell.headers["content-security-policy"]  # default-src 'self': no inline script
    assert "default-src 'self'" in shell.headers["content-security-policy"]
    assert shell.headers["referrer-policy"] == "no-referrer" and "test-key" not in shell.text
    for asset in ("/studio/js/app.js", "/studio/studio.css", "/studio/vendor/chart.umd.min.js"):
        assert httpx.get(root + asset).status_code == 200, asset
    missing = httpx.get(root + "/studio/nothing.js")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    assert httpx.post(root + "/").status_code == 401  # only reading the shell is open
    assert httpx.get(root + "/studio/../v1/models").status_code == 401


STUDIO = {"X-Requested-With": "tunelab-studio"}


def session_cookie(response, port: str) -> tuple[str, str]:
    """The studio's cookie from a sign-in answer: (its value, the whole Set-Cookie line)."""
    line = response.headers["set-cookie"]
    name, _, rest = line.partition("=")
    assert name == f"tunelab_session_{port}", line
    return rest.split(";")[0], line


def test_the_sign_in_link_gives_an_httponly_session_that_is_not_the_key(service):
    root = service.base_url.removesuffix("/v1")
    port = root.rsplit(":", 1)[1]
    signed = httpx.get(root + "/?token=test-key", follow_redirects=False)
    assert signed.status_code == 303 and signed.headers["location"] == "/"
    token, line = session_cookie(signed, port)
    assert "test-key" not in line and len(token) >= 32  # a random session token, never the key
    assert "HttpOnly" in line and "SameSite=strict" in line and "Path=/" in line
    refused = httpx.get(root + "/?token=wrong", follow_redirects=False)
    assert refused.status_code == 303 and refused.headers["location"] == "/#signin=invalid-link"
    assert "set-cookie" not in refused.headers
    cookie = {"Cookie": f"tunelab_session_{port}={token}"}
    assert httpx.get(service.base_url + "/models", headers={**cookie, **STUDIO}).status_code == 200
    # Without the pages' header (a form or link of another site sends the cookie, not the header): nothing.
    forged = httpx.get(service.base_url + "/models", headers=cookie)
    assert forged.status_code == 401 and forged.json()["error"]["code"] == "invalid_api_key"
    # The key itself in a cookie opens nothing: only sessions the server started count.
    by_key = httpx.get(service.base_url + "/models", headers={"Cookie": f"tunelab_session_{port}=test-key", **STUDIO})
    assert by_key.status_code == 401


def test_the_sign_in_form_starts_a_session_and_signing_out_ends_it_on_the_server(service):
    root = service.base_url.removesuffix("/v1")
    port = root.rsplit(":", 1)[1]
    wrong = httpx.post(root + "/studio/session", json={"key": "wrong"}, headers=STUDIO)
    assert wrong.status_code == 401 and "set-cookie" not in wrong.headers
    assert httpx.post(root + "/studio/session", json={"key": "test-key"}).status_code == 401  # not from the pages
    signed = httpx.post(root + "/studio/session", json={"key": "test-key"}, headers=STUDIO)
    assert signed.status_code == 200 and signed.json() == {"signed_in": True}
    token, line = session_cookie(signed, port)
    assert "test-key" not in line and "HttpOnly" in line and "SameSite=strict" in line
    cookie = {"Cookie": f"tunelab_session_{port}={token}", **STUDIO}
    assert httpx.get(root + "/studio/session", headers=cookie).json() == {"signed_in": True}
    assert httpx.get(service.base_url + "/files", headers=cookie).status_code == 200

    out = httpx.delete(root + "/studio/session", headers=cookie)
    assert out.status_code == 204 and "Max-Age=0" in out.headers["set-cookie"]
    # The token is dead on the server, not only forgotten by the browser: replaying it gets nothing.
    again = httpx.get(service.base_url + "/files", headers=cookie)
    assert again.status_code == 401 and "not signed in" in again.json()["error"]["message"]
    assert httpx.get(root + "/studio/session", headers=cookie).json() == {"signed_in": False}


def test_studio_sessions_end_when_unused_and_with_the_process():
    from tunelab.api.auth import Sessions

    now = [1000.0]
    sessions = Sessions(idle_seconds=60, clock=lambda: now[0])
    token = sessions.start()
    now[0] += 59
    assert sessions.valid(token)  # each use keeps it alive
    now[0] += 59
    assert sessions.valid(token)
    now[0] += 61
    assert not sessions.valid(token)
    assert not Sessions().valid(sessions.start())  # another process (a restarted server) knows none of them


def test_a_session_key_lives_in_memory_only(tmp_path):
    keys = Keys(tmp_path)
    assert not keys.configured()
    session = keys.add_session()
    keys.check(session)
    assert not keys.configured()  # it does not count as a configured key (a non-loopback bind still needs one)
    assert not keys.path.exists()
    with pytest.raises(AuthenticationFailed):
        Keys(tmp_path).check(session)  # a new process does not know it


def test_the_report_of_an_uploaded_file(service, tmp_path):
    client = service.client(max_retries=0)
    rows = varied_chats(14)
    rows[4] = {"messages": [{"role": "user", "content": "Hi"}, {"role": "robot", "content": "Beep"}]}
    rows[6] = rows[5]
    bad = upload(client, tmp_path, rows, "bad.jsonl")
    http = httpx.Client(base_url=service.base_url, headers=AUTH)
    report = http.get(f"/files/{bad.id}/report", params={"model": "tiny"}).json()
    assert report["object"] == "file.report" and report["ok"] is False and report["model"] == "tiny"
    checked = report["files"][0]
    assert checked["id"] == bad.id and checked["filename"] == "bad.jsonl" and checked["examples"] == 13
    assert {(e["line"], e["rule"]) for e in checked["errors"]} >= {(5, "invalid_role")}
    assert all(e["file"] == f"{bad.id} (bad.jsonl)" for e in checked["errors"])  # named by id, never a server path
    assert any(w["rule"] == "duplicate" and "lines 6, 7" in w["message"] for w in checked["warnings"]), checked["warnings"]
    tokens = checked["tokens"]
    assert sum(b["count"] for b in tokens["histogram"]) == tokens["examples"] == 13
    assert tokens["min"] <= tokens["median"] <= tokens["max"] and tokens["context_limit"] == 1024
    assert report["n_epochs"] == 8 and report["batch_size"] == 1 and report["estimated_seconds"] > 0

    good = upload(client, tmp_path, varied_chats(12), "good.jsonl")
    both = http.get(f"/files/{good.id}/report", params={"model": "tiny", "validation_file": bad.id}).json()
    assert both["ok"] is False and [f["id"] for f in both["files"]] == [good.id, bad.id]
    assert any(w["rule"] == "train_validation_overlap" for w in both["files"][1]["warnings"])
    service.app.state.service.settings.default_model = "tiny"  # as TUNELAB_DEFAULT_MODEL=tiny would
    default = http.get(f"/files/{good.id}/report").json()  # the default model, unless one is named
    assert default["ok"] is True and default["model"] == "tiny"

    for params, status, param in (({"model": "tiny"}, 404, "file_id"),
                                  ({"model": "/etc"}, 404, "model"),  # a model is named, never a path
                                  ({"model": "nope"}, 404, "model")):
        response = http.get("/files/file-nope/report" if param == "file_id" else f"/files/{good.id}/report",
                            params=params)
        assert response.status_code == status and response.json()["error"]["param"] == param, response.text
    missing_validation = http.get(f"/files/{good.id}/report", params={"model": "tiny", "validation_file": "file-x"})
    assert missing_validation.status_code == 404 and missing_validation.json()["error"]["param"] == "validation_file"


def test_a_fine_tunes_report_counts_with_its_base_and_result_files_are_not_checked(tuned, tmp_path):
    service, model = tuned
    client = service.client(max_retries=0)
    http = httpx.Client(base_url=service.base_url, headers=AUTH)
    job = client.fine_tuning.jobs.list().data[0]
    report = http.get(f"/files/{job.training_file}/report", params={"model": model}).json()
    assert report["model"] == "tiny" and report["ok"]
    results = http.get(f"/files/{job.result_files[0]}/report", params={"model": "tiny"})
    assert results.status_code == 400 and "fine-tune-results" in results.json()["error"]["message"]
    with pytest.raises(openai.BadRequestError):
        client.get(f"/files/{job.result_files[0]}/report", cast_to=object)


def test_fine_tuning_defaults_and_what_auto_resolves_to(service, tmp_path):
    http = httpx.Client(base_url=service.base_url, headers=AUTH)
    plain = http.get("/fine_tuning/defaults").json()
    assert plain["object"] == "fine_tuning.defaults" and plain["training_file"] is None
    hyper = plain["hyperparameters"]
    assert [hyper[k]["auto"] for k in ("n_epochs", "batch_size", "learning_rate_multiplier")] == [None, None, 1.0]
    assert all(v["default"] == "auto" and v["rule"] for v in hyper.values())
    for name, spec in hyper.items():  # the bounds shown are the bounds enforced
        low, high = spec["minimum"], spec["maximum"]
        check_bounds(name, high)
        with pytest.raises(ValueError):
            check_bounds(name, high + 1)
        if name != "learning_rate_multiplier":
            check_bounds(name, low)
            with pytest.raises(ValueError):
                check_bounds(name, low - 1)
        else:
            with pytest.raises(ValueError):
                check_bounds(name, low)  # exclusive: above 0

    train = upload(service.client(), tmp_path, varied_chats(70))
    sized = http.get("/fine_tuning/defaults", params={"training_file": train.id}).json()
    assert sized["training_file"] == {"id": train.id, "examples": 70}
    assert [sized["hyperparameters"][k]["auto"] for k in ("n_epochs", "batch_size", "learning_rate_multiplier")] \
        == [3, 2, 1.0]
    missing = http.get("/fine_tuning/defaults", params={"training_file": "file-nope"})
    assert missing.status_code == 404 and missing.json()["error"]["param"] == "training_file"
