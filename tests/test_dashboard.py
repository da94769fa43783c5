"""The dashboard over HTTP: a real server thread on 127.0.0.1, real DuckDB, LanceDB and photo store files."""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import re
import socket
import subprocess
import sys
import textwrap
import threading
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from dashboards import sample
from dashboards.access import host_allowed, same_origin, shelter_token
from dashboards.app import create_app, make_server
from dashboards.pages import Dashboard
from dashboards.report import report
from dashboards.server import DashboardServer
from engine.errors import HomewardError
from engine.search import SearchHit, SearchResult
from engine.storage import RunsDB
from ray_jobs import cli

REPO = Path(__file__).resolve().parents[1]
SEAS, ASTN = "petango:SEAS", "petharbor:ASTN"  # shelter keys: source:shelter_id
LOCAL = "127.0.0.1:8501"


def call(app: Dashboard, method: str, path: str, query=None, headers=None, body: bytes = b""):
    """A request to the app in process (no socket), as a browser on the dashboard's own page sends it (Host, and Origin
    on POST); a GET follows redirects with the cookies they set, as a browser does after a token link."""
    hdrs = {"host": LOCAL, **({"origin": f"http://{LOCAL}"} if method == "POST" else {}), **(headers or {})}
    client = TestClient(create_app(app), base_url=f"http://{LOCAL}", follow_redirects=method == "GET")
    resp = client.request(method, path, params=query, headers=hdrs, content=body)
    return SimpleNamespace(status=resp.status_code, body=resp.content, headers=resp.headers)


class Client:
    def __init__(self, base: str) -> None:
        self.base = base

    def request(self, method: str, path: str, data: bytes | None = None, headers: dict[str, str] | None = None):
        headers = {**({"Origin": self.base} if method == "POST" else {}), **(headers or {})}  # as a browser does
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=headers)
        opener = urllib.request.build_opener(NoRedirect)
        try:
            with opener.open(req, timeout=30) as resp:
                return resp.status, resp.headers, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.headers, exc.read()

    def get(self, path: str) -> tuple[int, dict[str, str], bytes]:
        return self.request("GET", path)

    def page(self, path: str) -> str:
        status, _, body = self.get(path)
        assert status == 200, (path, status, body[:300])
        return body.decode()

    def post_form(self, path: str, fields: dict[str, str], headers: dict[str, str] | None = None):
        data = urllib.parse.urlencode(fields).encode()
        hdrs = {"Content-Type": "application/x-www-form-urlencoded", **(headers or {})}
        return self.request("POST", path, data, hdrs)


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


@pytest.fixture()
def site(settings):
    info = sample.populate(settings)
    calls: list[dict[str, Any]] = []

    def recording_search(cfg, image, *, species=None, near=None, radius_km=None, k=10) -> SearchResult:
        """Stands where engine.search.search_image is: records what the upload handed it."""
        calls.append({"size": image.size, "species": species, "near": near, "radius_km": radius_km, "k": k})
        hit = {"source": None, "name": None, "location": None, "event_date": None, "posted_at": None,
               "image_sim": 0.5, "explanation": ""}  # fmt: skip
        return SearchResult(
            model="fake",
            species=species or "unknown",
            detections=[],
            fallback_full_frame=False,
            results=[
                SearchHit(
                    **{**hit, "source": "petango", "name": "Buddy", "event_date": dt.date(2026, 10, 2)},
                    rank=1,
                    listing_id=info["listings"]["shelter_a101"],
                    score=0.87,
                    kind="shelter",
                    species="dog",
                    url="https://www.petango.com/Adopt/Dog-Labrador-Retriever-A101",
                    photo_id=info["photos"]["shelter_a101"],
                    distance_km=3.2,
                ),
                SearchHit(
                    **hit,
                    rank=2,
                    listing_id="x",
                    score=0.31,
                    kind=None,
                    species=None,
                    url="javascript:alert(1)",
                    photo_id="../../etc/passwd",
                    distance_km=None,
                ),
            ],
        )

    with serving(settings, search_fn=recording_search) as server:
        yield {"info": info, "client": Client(server.url), "server": server, "calls": calls, "settings": settings}


@contextlib.contextmanager
def serving(settings, **kwargs: Any) -> Iterator[DashboardServer]:
    """A dashboard server thread on 127.0.0.1 and a free port (``kwargs`` go to make_server)."""
    server = make_server(settings, port=0, **kwargs)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def form_key(html: str) -> str:
    m = re.search(r'name="form_key" value="([^"]+)"', html)
    assert m, "page carries the form key"
    return m.group(1)


def test_binds_loopback_by_default(site):
    assert site["server"].server_address[0] == "127.0.0.1"
    assert site["server"].app.exposed is False


def test_overview_and_operator_pages(site):
    c = site["client"]
    home = c.page("/")
    assert re.search(r'id="fig-week">3<', home) and re.search(r'id="fig-open">4<', home)
    assert "match-latest" in home and "match-running" not in home
    ops = c.page("/operators")
    health = ops.split('id="crawl-health"')[1].split("</table>")[0]
    assert all(src in health for src in ("craigslist", "pet911", "petango", "petharbor"))
    assert "never succeeded" in health and "robots.txt refused" in health
    jobs = ops.split('id="jobs"')[1].split("</table>")[0]
    assert "enrich-1" in jobs and "4.00" in jobs  # 160 photos in 40 s
    assert "match-running" in jobs  # operators do see the run in progress
    loop = ops.split('id="loop-rounds"')[1].split("</table>")[0]
    assert "round-1" in loop and "match:failed, match:ok" in loop and "610.0" in loop
    assert "craigslist failed 3 times in a row" in ops.split('id="loop-alerts"')[1]


def test_analyst_page(site):
    page = site["client"].page("/analysts")
    assert re.search(r'id="reunion-count">2<', page)
    ttr = RunsDB(site["settings"].duckdb)
    with ttr.read() as con:
        med = con.execute("SELECT median(days_to_reunion) FROM time_to_reunion").fetchone()[0]
    assert re.search(rf'id="median-reunion">{med:.1f}<', page)
    for section in ("listings-over-time", "score-distribution", "reunions", "source-yield", "listing-totals"):
        assert f'id="{section}"' in page
    over_time = page.split('id="listings-over-time"')[1].split("</div>")[0]  # grouped by source and species
    assert "petango · dog" in over_time and "pet911 · cat" in over_time
    yield_table = page.split('id="source-yield"')[1].split("</table>")[0]
    assert "petharbor" in yield_table


def test_shelter_page_shows_open_candidates_with_stored_photos(site):
    info = site["info"]
    page = site["client"].page("/shelter/petango:SEAS")
    assert "Seattle Animal Shelter" in page and "Never pay anyone" in page
    assert page.count('class="candidate') == 2
    assert info["listings"]["shelter_a102"] in page and info["listings"]["shelter_a101"] in page
    assert info["listings"]["lost_luna"] not in page  # luna/a101 was rejected; luna/a102 is unpublished
    srcs = re.findall(r'<img src="([^"]+)"', page)
    assert srcs and all(s.startswith("/photo/") for s in srcs)
    assert "img.example.invalid" not in page
    assert 'href="https://seattle.craigslist.org/laf/7781.html"' in page


def test_photo_endpoint_serves_small_exif_free_jpegs(site):
    pid = site["info"]["photos"]["lost_buddy"]
    status, headers, body = site["client"].get(f"/photo/{pid}?size=200")
    assert status == 200 and headers["Content-Type"] == "image/jpeg"
    img = Image.open(io.BytesIO(body))
    assert img.format == "JPEG" and max(img.size) == 200
    assert not img.getexif() and b"Exif" not in body[:4096]
    assert site["client"].get("/photo/" + "0" * 64)[0] == 404  # well-formed, unknown
    assert site["client"].get("/photo/..%2F..%2Fetc%2Fpasswd")[0] == 404
    assert site["client"].get("/nowhere")[0] == 404


def test_feedback_form_post_writes_duckdb_and_the_pair_leaves_reports(site):
    c, info, settings = site["client"], site["info"], site["settings"]
    key = form_key(c.page("/shelter/petango:SEAS"))
    pair = {"lost_listing_id": info["listings"]["lost_buddy"], "found_listing_id": info["listings"]["shelter_a102"]}
    # no form key: refused (another site cannot post verdicts through a browser)
    assert c.post_form("/shelter/petango:SEAS/feedback", {**pair, "verdict": "rejected"})[0] == 403
    assert c.post_form("/shelter/petango:SEAS/feedback", {**pair, "verdict": "maybe", "form_key": key})[0] == 400
    # a pair of another shelter cannot be decided from this shelter's page
    other = {"lost_listing_id": info["listings"]["lost_misha"], "found_listing_id": info["listings"]["found_cat"]}
    assert c.post_form("/shelter/petango:SEAS/feedback", {**other, "verdict": "rejected", "form_key": key})[0] == 404
    note = "not him; owner says call +1 (206) 555-0142, chip 985112003456789"
    status, headers, _ = c.post_form(
        "/shelter/petango:SEAS/feedback", {**pair, "verdict": "rejected", "form_key": key, "who": "Dana", "note": note}
    )
    assert status == 303 and headers["Location"] == "/shelter/petango%3ASEAS"
    rows = RunsDB(settings.duckdb).query(
        "SELECT verdict, who, note FROM feedback WHERE lost_listing_id = ? AND found_listing_id = ?",
        [pair["lost_listing_id"], pair["found_listing_id"]],
    )
    assert [r[:2] for r in rows] == [("rejected", "Dana")]
    stored_note = rows[0][2]
    assert stored_note.startswith("not him") and "555-0142" not in stored_note and "985112003456789" not in stored_note
    page = c.page("/shelter/petango:SEAS")
    assert info["listings"]["shelter_a102"] not in page and page.count('class="candidate') == 1
    seas = next(e for e in report(settings, shelter=SEAS)["reports"])
    assert seas["rows"] == 1


def test_feedback_json_path_used_by_the_page_script(site):
    c, info, settings = site["client"], site["info"], site["settings"]
    key = form_key(c.page("/shelter/pet911"))
    status, headers, body = c.post_form(
        "/shelter/pet911/feedback",
        {
            "lost_listing_id": info["listings"]["lost_misha"],
            "found_listing_id": info["listings"]["found_cat"],
            "verdict": "confirmed",
        },
        headers={"Accept": "application/json", "X-Requested-With": "fetch", "X-Homeward-Form": key},
    )
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert json.loads(body)["verdict"] == "confirmed"
    got = RunsDB(settings.duckdb).query(
        "SELECT verdict, who FROM pair_verdicts WHERE lost_listing_id = ?", [info["listings"]["lost_misha"]]
    )
    assert got == [("confirmed", "dashboard:pet911")]
    status, _, body = c.post_form("/shelter/pet911/feedback", {"verdict": "confirmed"}, {"Accept": "application/json"})
    assert status == 403 and "form key" in json.loads(body)["error"]


def test_jobs_can_write_while_the_dashboard_serves_and_it_waits_for_a_writer(site):
    """The dashboard holds no DuckDB handle between requests: another process (a job) writes while it serves, and
    a page requested during that job's transaction is answered once the transaction ends."""
    c, settings = site["client"], site["settings"]
    c.page("/operators")
    run_id = f"crawl-{uuid.uuid4().hex[:6]}"
    script = textwrap.dedent(
        f"""
        import time, datetime as dt
        from engine.storage import RunsDB
        runs = RunsDB({settings.duckdb!r}, busy_timeout_s=5)
        with runs.write() as con:
            con.execute("INSERT INTO crawl_runs (run_id, source, started, status, items) "
                        "VALUES (?, 'newsource', ?, 'ok', 7)", [{run_id!r}, dt.datetime.now(dt.timezone.utc)])
            print("holding", flush=True)
            time.sleep(3.0)
        print("done", flush=True)
        """
    )
    job = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert job.stdout.readline().strip() == "holding"
        page = c.page("/operators")  # requested while the job holds the write lock
        assert job.wait(timeout=30) == 0
    finally:
        if job.poll() is None:
            job.kill()
    assert run_id in page and "newsource" in page  # served after the job committed, with its row


def test_search_upload_reaches_the_search_function(site):
    c, calls, info = site["client"], site["calls"], site["info"]
    page = c.page("/search")
    key = form_key(page)
    photo = sample.make_photo((20, 20, 24), (120, 170, 90), size=(400, 300), exif=False)
    body, ctype = multipart(
        {"form_key": key, "species": "dog", "near": "47.61,-122.33", "radius_km": "25", "k": "5"},
        {"photo": ("buddy.jpg", photo)},
    )
    status, _, html = c.request("POST", "/search", body, {"Content-Type": ctype})
    html = html.decode()
    assert status == 200, html[:500]
    assert calls == [{"size": (400, 300), "species": "dog", "near": (47.61, -122.33), "radius_km": 25.0, "k": 5}]
    results = html.split('id="search-results"')[1]
    assert f"/photo/{info['photos']['shelter_a101']}" in results and "0.87" in results and "3.2 km" in results
    assert "“Buddy”" in results and "petango" in results and "2026-10-02" in results  # source, name and date
    assert "javascript:" not in results and "etc/passwd" not in results
    # bad input is answered on the form, and nothing is searched
    body, ctype = multipart({"form_key": key, "near": "Xyzzy Nowhere", "radius_km": "5"}, {"photo": ("x.jpg", photo)})
    status, _, html = c.request("POST", "/search", body, {"Content-Type": ctype})
    assert status == 400 and "cannot place" in html.decode() and len(calls) == 1
    body, ctype = multipart({"form_key": "stale"}, {"photo": ("x.jpg", photo)})
    assert c.request("POST", "/search", body, {"Content-Type": ctype})[0] == 403
    body, ctype = multipart({"form_key": key}, {"photo": ("x.jpg", b"<html>not a photo</html>")})
    status, _, html = c.request("POST", "/search", body, {"Content-Type": ctype})
    assert status == 400 and "not a photo" in html.decode() and len(calls) == 1


def test_a_failing_search_is_shown_not_swallowed(settings):
    sample.populate(settings)

    def broken(cfg, image, **kwargs):
        raise RuntimeError("index is corrupt")

    app = Dashboard(settings, host="127.0.0.1", search_fn=broken)
    photo = sample.make_photo((20, 20, 24), (120, 170, 90), size=(200, 150), exif=False)
    body, ctype = multipart({"form_key": app.form_key}, {"photo": ("q.jpg", photo)})
    resp = call(app, "POST", "/search", headers={"content-type": ctype}, body=body)
    assert resp.status == 500 and b"search failed: RuntimeError: index is corrupt" in resp.body


def test_search_with_engine_search(settings):
    """The real engine.search behind the form (tiny models built from config; nothing enriched yet, so it answers
    with its explanation, which the page shows)."""
    cfg = settings.with_overrides({"enrich": {"profile": "tiny"}})
    sample.populate(cfg)
    app = Dashboard(cfg, host="127.0.0.1")
    photo = sample.make_photo((20, 20, 24), (120, 170, 90), size=(400, 300), exif=False)
    body, ctype = multipart({"form_key": app.form_key, "species": "dog", "k": "3"}, {"photo": ("q.jpg", photo)})
    resp = call(app, "POST", "/search", headers={"content-type": ctype}, body=body)
    html = resp.body.decode()
    assert resp.status == 200, html[:800]
    assert 'id="search-message"' in html and "nothing to search yet" in html
    assert "0 nearest listing(s)" in html


def multipart(fields: dict[str, str], files: dict[str, tuple[str, bytes]]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    out = io.BytesIO()
    for name, value in fields.items():
        out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, (filename, data) in files.items():
        out.write(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
            f"Content-Type: image/jpeg\r\n\r\n".encode()
        )
        out.write(data + b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={boundary}"


# --- exposed: tokens (the app object, no socket on a public address) ------------------------------------------


def test_exposed_refuses_the_default_salt(settings):
    sample.populate(settings)
    with pytest.raises(HomewardError, match="salt"):
        Dashboard(settings, host="0.0.0.0")


def test_exposed_shelter_views_need_the_shelter_token(settings):
    cfg = settings.with_overrides({"salt": "a-real-secret-salt"})
    info = sample.populate(cfg)
    app = Dashboard(cfg, host="0.0.0.0", token="operator-secret")
    assert app.exposed

    def get(path: str, **query: str):
        return call(app, "GET", path, query)

    seas, astn = shelter_token(cfg, SEAS), shelter_token(cfg, ASTN)
    assert seas != shelter_token(settings, SEAS)  # derived from the salt
    assert get("/shelter/petango:SEAS").status == 403
    assert get("/shelter/petango:SEAS", token=astn).status == 403  # another shelter's token
    assert get("/shelter/petango:SEAS", token=seas).status == 200
    assert get("/shelter/petango:SEAS", token="operator-secret").status == 200
    # the token moves from the query string to a cookie scoped to the shelter's path, and the URL comes back clean
    client = TestClient(create_app(app), base_url=f"http://{LOCAL}", follow_redirects=False)
    first = client.get(f"/shelter/{SEAS}?token={seas}&sort=newest")
    assert first.status_code == 303 and first.headers["location"] == "/shelter/petango%3ASEAS?sort=newest"
    cookie = first.headers["set-cookie"].lower()
    assert f"hw_token={seas}" in cookie and "httponly" in cookie and "samesite=lax" in cookie
    assert "path=/shelter/petango%3aseas" in cookie
    assert call(app, "GET", "/shelter/petango%3ASEAS", headers={"cookie": f"hw_token={seas}"}).status == 200
    assert call(app, "GET", "/shelter/petango%3ASEAS", headers={"cookie": f"hw_token={astn}"}).status == 403
    # the API takes the token in a header
    api = f"/api/shelters/{SEAS}/candidates"
    assert call(app, "GET", api).status == 403 and call(app, "GET", api, {"token": seas}).status == 403
    got = call(app, "GET", api, headers={"x-homeward-token": seas})
    assert got.status == 200 and json.loads(got.body)["total"] == 2
    assert get("/shelters").status == 403 and get("/shelters", token=seas).status == 403
    index = get("/shelters", token="operator-secret")
    assert index.status == 200 and f"token={seas}".encode() in index.body
    assert get("/operators").status == 200 and get("/").status == 200  # not shelter views
    # a verdict needs the token too, even with the page's form key
    fields = {
        "lost_listing_id": info["listings"]["lost_buddy"],
        "found_listing_id": info["listings"]["shelter_a102"],
        "verdict": "rejected",
        "form_key": app.form_key,
    }
    hdrs = {"content-type": "application/x-www-form-urlencoded"}
    denied = call(app, "POST", f"/shelter/{SEAS}/feedback", headers=hdrs, body=urllib.parse.urlencode(fields).encode())
    assert denied.status == 403
    body = urllib.parse.urlencode({**fields, "token": seas}).encode()
    ok = call(app, "POST", f"/shelter/{SEAS}/feedback", headers=hdrs, body=body)
    # back to the clean URL: the token moves into the shelter's cookie, out of the address bar and history
    assert ok.status == 303 and ok.headers["Location"] == "/shelter/petango%3ASEAS"
    assert f"hw_token={seas}" in ok.headers["set-cookie"]
    assert RunsDB(cfg.duckdb).query("SELECT count(*) FROM feedback WHERE who = 'dashboard:petango:SEAS'") == [(1,)]


def test_report_prints_the_tokens_the_dashboard_accepts(settings):
    cfg = settings.with_overrides({"salt": "another-secret"})
    sample.populate(cfg)
    tokens = {e["shelter"]: e["token"] for e in report(cfg, all=True)["reports"]}
    app = Dashboard(cfg, host="0.0.0.0")
    for key, token in tokens.items():
        resp = call(app, "GET", f"/shelter/{urllib.parse.quote(key)}", {"token": token})
        assert resp.status == 200, key


@pytest.mark.parametrize("stop", ["SIGINT", "SIGTERM"])
def test_cli_dashboard_serves_until_interrupted(settings, stop):
    """`homeward dashboard --port 0` as a user runs it: prints its URL, serves, stops cleanly on Ctrl-C (SIGINT) or a
    service manager's SIGTERM."""
    import signal

    sample.populate(settings)
    proc = subprocess.Popen(
        [sys.executable, "-m", "ray_jobs.cli", "dashboard", "--data-dir", settings.data_dir, "--port", "0"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        m = re.search(r"(http://127\.0\.0\.1:\d+)", line)
        assert m, line + proc.stderr.read() if proc.poll() is not None else line
        status, _, body = Client(m.group(1)).get("/healthz")
        assert status == 200 and json.loads(body) == {"ok": True, "exposed": False}
        assert "Seattle Animal Shelter" in Client(m.group(1)).page("/shelter/petango:SEAS")
        proc.send_signal(getattr(signal, stop))
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert json.loads(out.strip().splitlines()[-1])["url"] == m.group(1)


def test_cli_dashboard_flags(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["dashboard", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--host" in out and "--port" in out and "--token" in out


def test_every_page_renders_on_an_empty_data_dir(settings):
    app = Dashboard(settings, host="127.0.0.1")  # no job has run: the file, schema and views are created
    for path in ("/", "/operators", "/analysts", "/search", "/shelters"):
        resp = call(app, "GET", path)
        assert resp.status == 200, (path, resp.body[:300])
    assert b"No published match run yet" in call(app, "GET", "/").body
    assert call(app, "GET", f"/shelter/{SEAS}").status == 404


# --- hardening: Host, Origin, request framing, idle sockets, connection cap -----------------------------------------


def raw(server: DashboardServer, data: bytes) -> bytes:
    """Send ``data`` on a fresh socket and read until the server closes it (raises if it never does)."""
    with socket.create_connection(server.server_address[:2], timeout=15) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def test_a_foreign_host_gets_no_data(site):
    """DNS rebinding: a page on evil.example re-pointed at 127.0.0.1 reaches the socket, but says Host: evil.example."""
    server, port = site["server"], site["server"].server_address[1]
    for path in ("/shelter/petango:SEAS", "/shelters", "/healthz", "/operators"):
        for host in (f"evil.example:{port}", "evil.example", "127.0.0.1.evil.example", "10.0.0.1", "bad host", ""):
            got = raw(server, f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            assert status_of(got) == 400, (path, host, got[:200])
            assert b"Seattle" not in got and b"petango" not in got and b'"ok": true' not in got
        assert status_of(raw(server, f"GET {path} HTTP/1.0\r\n\r\n".encode())) == 400  # no Host at all
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", "LOCALHOST"):
        got = raw(server, f"GET /shelter/petango:SEAS HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        assert status_of(got) == 200 and b"Seattle Animal Shelter" in got, host


def test_allowed_hosts_for_a_reverse_proxy_and_wildcard_binds(settings):
    cfg = settings.with_overrides({"salt": "s3cret-salt", "dashboard": {"allowed_hosts": "dash.example.org"}})
    behind_proxy = Dashboard(cfg, host="127.0.0.1")
    assert call(behind_proxy, "GET", "/healthz", headers={"host": "dash.example.org"}).status == 200
    assert call(behind_proxy, "GET", "/healthz", headers={"host": "evil.example"}).status == 400
    # a proxy that rewrites Host: the browser's Origin on the public name is still this dashboard's own
    fields = urllib.parse.urlencode({"verdict": "confirmed"}).encode()
    post = {"content-type": "application/x-www-form-urlencoded"}
    own = call(behind_proxy, "POST", f"/shelter/{SEAS}/feedback", body=fields,
               headers={**post, "origin": "https://dash.example.org"})  # fmt: skip
    assert own.status == 403 and b"form key" in own.body  # past the Origin check, stopped by the missing form key
    with pytest.raises(HomewardError, match=r"allowed_hosts: not a host name: '\*\.example\.org'"):
        Dashboard(cfg.with_overrides({"dashboard": {"allowed_hosts": ["*.example.org"]}}), host="127.0.0.1")
    wildcard = Dashboard(settings.with_overrides({"salt": "s3cret-salt"}), host="0.0.0.0")
    for host, status in (("192.168.1.20:8501", 200), ("[fd00::5]", 200), ("localhost", 200), ("evil.example", 400)):
        assert call(wildcard, "GET", "/healthz", headers={"host": host}).status == status, host


def test_cross_origin_posts_are_refused_and_not_recorded(site):
    c, info, settings, calls = site["client"], site["info"], site["settings"], site["calls"]
    key = form_key(c.page(f"/shelter/{SEAS}"))
    fields = {
        "lost_listing_id": info["listings"]["lost_buddy"],
        "found_listing_id": info["listings"]["shelter_a102"],
        "verdict": "rejected",
        "form_key": key,
    }
    path = f"/shelter/{SEAS}/feedback"
    for headers in (
        {"Origin": "http://evil.example"},
        {"Origin": "null"},  # sandboxed frame, data: page
        {"Origin": c.base.replace("127.0.0.1", "localhost")},  # another origin, although the same machine
        {"Origin": c.base.rsplit(":", 1)[0] + ":1"},  # another port
        {"Origin": "", "Referer": "http://evil.example/page"},
        {"Origin": "", "Referer": ""},  # neither: refused too
    ):
        status, _, body = c.post_form(path, fields, headers)
        assert status == 403 and b"cross-origin" in body, headers
    # DNS rebinding: Host and Origin agree, but the name is not this dashboard's
    port = site["server"].server_address[1]
    data = urllib.parse.urlencode(fields)
    got = raw(
        site["server"],
        f"POST {path} HTTP/1.1\r\nHost: evil.example:{port}\r\nOrigin: http://evil.example:{port}\r\n"
        f"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {len(data)}\r\n\r\n{data}".encode(),
    )
    assert status_of(got) == 400
    body, ctype = multipart({"form_key": form_key(c.page("/search"))}, {"photo": ("x.jpg", sample.make_photo(
        (20, 20, 24), (120, 170, 90), size=(64, 64), exif=False))})  # fmt: skip
    assert c.request("POST", "/search", body, {"Content-Type": ctype, "Origin": "http://evil.example"})[0] == 403
    assert calls == []
    assert RunsDB(settings.duckdb).query("SELECT count(*) FROM feedback WHERE who LIKE 'dashboard:%'") == [(0,)]
    # the same post from the page's own origin (Origin, or a same-origin Referer alone) is recorded
    assert c.post_form(path, fields, {"Origin": "", "Referer": f"{c.base}/shelter/{SEAS}"})[0] == 303
    assert RunsDB(settings.duckdb).query("SELECT count(*) FROM feedback WHERE who LIKE 'dashboard:%'") == [(1,)]


FRAMINGS = [
    ("Content-Length: -1\r\n", 400),
    ("Content-Length: -99999999999\r\n", 400),
    ("Content-Length: abc\r\n", 400),
    ("Content-Length: 1_0\r\n", 400),
    ("Content-Length: +10\r\n", 400),
    ("Content-Length: 10\r\nContent-Length: 12\r\n", 400),
    ("", 411),
    ("Transfer-Encoding: chunked\r\n", 411),
    ("Content-Length: 99999999999999\r\n", 413),
    (f"Content-Length: {64 * 1024 + 1}\r\n", 413),  # a verdict form has a small limit
    ("Content-Length: 16\r\nHost: evil.example\r\n", 400),  # a second Host
]


def test_bad_content_length_is_answered_not_dropped(site):
    port = site["server"].server_address[1]
    for framing, status in FRAMINGS:
        got = raw(
            site["server"],
            f"POST /shelter/{SEAS}/feedback HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nOrigin: http://127.0.0.1:{port}\r\n"
            f"Content-Type: application/x-www-form-urlencoded\r\n{framing}\r\nverdict=rejected".encode(),
        )
        head, _, body = got.partition(b"\r\n\r\n")
        assert status_of(got) == status and body.strip(), (framing, got[:300])
        assert b"X-Content-Type-Options: nosniff" in head and b"X-Frame-Options: DENY" in head
    assert RunsDB(site["settings"].duckdb).query("SELECT count(*) FROM feedback WHERE who LIKE 'dashboard:%'") == [(0,)]
    assert site["client"].get("/healthz")[0] == 200  # and the server goes on serving


def test_security_headers_on_pages(site):
    status, headers, _ = site["client"].get(f"/shelter/{SEAS}")
    assert status == 200 and headers["X-Frame-Options"] == "DENY" and headers["X-Content-Type-Options"] == "nosniff"
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
    assert headers["Referrer-Policy"] == "same-origin"  # under no-referrer, browsers would send Origin: null


def test_idle_and_stalled_sockets_are_closed(settings):
    with serving(settings, idle_timeout_s=0.5) as server:
        assert raw(server, b"") == b""  # connected, said nothing: closed by the server, not by the 15 s client timeout
        assert raw(server, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n") == b""  # headers never finished
        port = server.server_address[1]
        got = raw(server, f"POST /search HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 100\r\n\r\nab".encode())
        assert got == b""  # the body stalls short of its Content-Length
        assert Client(server.url).get("/healthz")[0] == 200


def test_connections_beyond_the_cap_get_503(settings):
    with serving(settings, idle_timeout_s=5, max_connections=1) as server:
        with socket.create_connection(server.server_address[:2], timeout=15) as idle:
            idle.sendall(b"GET /healthz HTTP/1.1\r\n")  # holds the only slot, mid-request
            got = raw(server, b"")
            assert status_of(got) == 503 and b"Retry-After: 5" in got and b"X-Content-Type-Options: nosniff" in got
        status = None
        for _ in range(100):  # the slot frees once the server thread sees the idle client leave
            status = Client(server.url).get("/healthz")[0]
            if status == 200:
                break
        assert status == 200


def test_same_origin_and_host_rules():
    assert same_origin("http://127.0.0.1:8501", "127.0.0.1:8501") and same_origin("http://[::1]:8501", "[::1]:8501")
    assert same_origin("https://dash.example.org", "dash.example.org") and same_origin("http://a.b:80", "A.B")
    for origin in ("http://127.0.0.1:8502", "http://127.0.0.1", "null", "file:///x", "", "http://127.0.0.1:x"):
        assert not same_origin(origin, "127.0.0.1:8501"), origin
    assert not same_origin("http://127.0.0.1.evil.example:8501", "127.0.0.1:8501")
    assert same_origin("https://dash.example.org", "127.0.0.1:8501", ["dash.example.org"])  # proxy rewrote Host
    assert not same_origin("https://dash.example.org:8443", "127.0.0.1:8501", ["dash.example.org:443"])
    assert host_allowed("127.0.0.2:1", "127.0.0.1") and not host_allowed("127.0.0.1", "192.168.1.5")
    assert host_allowed("192.168.1.5:8501", "192.168.1.5") and not host_allowed("dash.local", "192.168.1.5")
    assert host_allowed("DASH.local.", "192.168.1.5", ["dash.local"])
    for bad in ("", "a b", "a/b", "a@b", "[::1", "x:99999", "x:"):
        assert not host_allowed(bad, "127.0.0.1"), bad


# --- the JSON API, paging and filters, the candidate map ------------------------------------------------------------


def test_openapi_lists_the_api_and_search_answers_json(site):
    c, info, calls = site["client"], site["info"], site["calls"]
    status, _, body = c.get("/openapi.json")
    paths = json.loads(body)["paths"]
    assert status == 200 and "post" in paths["/api/search"] and "/healthz" in paths
    assert "get" in paths["/api/shelters/{key}/candidates"] and "post" in paths["/api/shelters/{key}/verdicts"]
    assert "/shelter/{key}" not in paths  # pages are not API
    photo = sample.make_photo((20, 20, 24), (120, 170, 90), size=(300, 200), exif=False)
    body, ctype = multipart({"near": "47.61,-122.33", "radius_km": "25", "species": "dog", "k": "5"},
                            {"photo": ("q.jpg", photo)})  # fmt: skip
    status, headers, got = c.request("POST", "/api/search", body, {"Content-Type": ctype})
    assert status == 200 and headers["Content-Type"] == "application/json", got[:300]
    first, second = json.loads(got)["results"]
    assert calls[-1] == {"size": (300, 200), "species": "dog", "near": (47.61, -122.33), "radius_km": 25.0, "k": 5}
    assert (first["source"], first["name"], first["kind"], first["event_date"]) == ("petango", "Buddy", "shelter",
                                                                                    "2026-10-02")  # fmt: skip
    assert first["score"] == 0.87 and first["distance_km"] == 3.2 and "explanation" in first
    assert (
        first["photo_id"] == info["photos"]["shelter_a101"] and first["listing_id"] == info["listings"]["shelter_a101"]
    )
    assert second["url"] is None and second["photo_id"] is None  # javascript: and a path are never handed on
    body, ctype = multipart({"near": "Xyzzy Nowhere"}, {"photo": ("q.jpg", photo)})
    status, _, got = c.request("POST", "/api/search", body, {"Content-Type": ctype})
    assert status == 400 and "cannot place" in json.loads(got)["error"] and len(calls) == 1
    body, ctype = multipart({"near": "Seattle, WA", "radius_km": "10"}, {"photo": ("q.jpg", photo)})
    status, _, got = c.request("POST", "/api/search", body, {"Content-Type": ctype})
    near = calls[-1]["near"]  # a place as people give it
    assert status == 200 and abs(near[0] - 47.61) < 0.1 and abs(near[1] + 122.33) < 0.1, got


def test_candidates_are_paged_filtered_and_photos_lazy(site):
    c, info = site["client"], site["info"]
    a101, a102 = info["listings"]["shelter_a101"], info["listings"]["shelter_a102"]
    first = c.page(f"/shelter/{SEAS}?per_page=1")
    assert first.count('class="candidate') == 1 and a102 in first  # undecided first, then the confirmed a101
    assert 'rel="next"' in first and "page 1 of 2" in first
    second = c.page(f"/shelter/{SEAS}?per_page=1&page=2")
    assert a101 in second and a102 not in second and 'rel="prev"' in second
    imgs = re.findall(r"<img [^>]*>", first + second)
    assert imgs and all('loading="lazy"' in img for img in imgs)
    assert c.page(f"/shelter/{SEAS}?open=1").count('class="candidate') == 1  # the confirmed pair is decided
    assert "No open candidates" in c.page(f"/shelter/{SEAS}?species=cat")
    # new since the last visit: a visit two days ago saw a101 (first published 8 days ago), not a102 (an hour ago)
    two_days = int((dt.datetime.now(dt.UTC) - dt.timedelta(days=2)).timestamp())
    status, headers, body = c.request("GET", f"/shelter/{SEAS}?new=1", headers={"Cookie": f"hw_visit=0-{two_days}"})
    page = body.decode()
    assert status == 200 and a102 in page and a101 not in page and 'class="pill new"' in page
    assert f"hw_visit={two_days}-" in headers["Set-Cookie"] and "Path=/shelter/petango%3ASEAS" in headers["Set-Cookie"]
    # the same paging in the API
    status, _, body = c.get(f"/api/shelters/{SEAS}/candidates?per_page=1&page=2")
    got = json.loads(body)
    assert status == 200 and (got["total"], got["pages"], got["page"]) == (2, 2, 2)
    assert [(i["found_listing_id"], i["verdict"]) for i in got["items"]] == [(a101, "confirmed")]
    newest = json.loads(c.get(f"/api/shelters/{SEAS}/candidates?sort=newest&open=true")[2])["items"]
    assert [i["found_listing_id"] for i in newest] == [a102]
    assert c.get(f"/api/shelters/{SEAS}/candidates?per_page=1000")[0] == 422


def test_verdict_through_the_api(site):
    c, info, settings = site["client"], site["info"], site["settings"]
    pair = {"lost_listing_id": info["listings"]["lost_misha"], "found_listing_id": info["listings"]["found_cat"]}
    data = json.dumps({**pair, "verdict": "rejected", "who": "api"}).encode()
    # a script without Origin says so with the token header, which a cross-site page cannot send
    script = {"Content-Type": "application/json", "Origin": "", "X-Homeward-Token": "x"}
    status, _, body = c.request("POST", "/api/shelters/pet911/verdicts", data, script)
    assert status == 200 and json.loads(body)["verdict"] == "rejected", body
    assert RunsDB(settings.duckdb).query("SELECT verdict, who FROM pair_verdicts WHERE lost_listing_id = ?",
                                         [pair["lost_listing_id"]]) == [("rejected", "api")]  # fmt: skip
    status, _, _ = c.request("POST", "/api/shelters/pet911/verdicts", data,
                             {"Content-Type": "application/json", "Origin": ""})  # fmt: skip
    assert status == 403  # neither Origin nor a script's header


def test_candidate_map_with_leaflet_served_locally(site):
    c, info = site["client"], site["info"]
    lost, found = info["listings"]["lost_buddy"], info["listings"]["shelter_a102"]
    assert f"/shelter/petango%3ASEAS/pair?lost={lost}&amp;found={found}" in c.page(f"/shelter/{SEAS}")
    status, headers, body = c.get(f"/shelter/{SEAS}/pair?lost={lost}&found={found}")
    page = body.decode()
    assert status == 200 and '<script src="/static/leaflet/leaflet.js"' in page and 'id="map"' in page
    data = json.loads(page.split('id="map-data">')[1].split("</script>")[0])
    assert data["points"] == {"lost": [47.6805, -122.329], "found": [47.589, -122.317]} and data["tile_url"] == ""
    csp = headers["Content-Security-Policy"]
    assert "http" not in csp and "script-src 'self';" in csp  # nothing from another site
    for asset in ("/static/leaflet/leaflet.js", "/static/leaflet/leaflet.css", "/static/map.js"):
        assert c.get(asset)[0] == 200, asset
    assert b"Leaflet 1.9.4" in c.get("/static/leaflet/leaflet.js")[2]
    assert c.get(f"/shelter/{SEAS}/pair?lost={lost}&found={info['listings']['found_cat']}")[0] == 404


def test_tile_url_goes_into_the_csp(settings):
    tiles = settings.with_overrides({"dashboard": {"tile_url": "https://{s}.tile.example.org/{z}/{x}/{y}.png"}})
    csp = call(Dashboard(tiles, host="127.0.0.1"), "GET", "/healthz").headers["content-security-policy"]
    assert "img-src 'self' data: https://*.tile.example.org;" in csp
    with pytest.raises(HomewardError, match="tile_url"):
        Dashboard(settings.with_overrides({"dashboard": {"tile_url": "javascript:alert(1)"}}), host="127.0.0.1")
