"""Secrets: kept as the exact string given, never echoed in an error, never written where a crawl leaves files."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine import ids
from engine.config import ConfigError, load_settings, parse_assignments
from engine.redact import canonical_contact, redact
from engine.storage import RunsDB
from tests.mock_site import ListingSite, MockSite, crawl_settings, listings, site_source

REPO = Path(__file__).resolve().parents[1]
SECRETS = {
    "salt": "salt-S3KR1T-salt",
    "crawl.petfinder_key": "key-S3KR1T-key",
    "crawl.petfinder_secret": "secret-S3KR1T-secret",
    "report.smtp_password": "pw-S3KR1T-pw",
    "storage_options.aws_secret_access_key": "aws-S3KR1T-aws",
}
MARK = b"S3KR1T"


def _value(settings: object, dotted: str) -> object:
    head, _, leaf = dotted.partition(".")
    node = getattr(settings, head)
    if not leaf:
        return node
    return node[leaf] if isinstance(node, dict) else getattr(node, leaf)


def _config_file(path: Path, flat: dict[str, str]) -> Path:
    nested: dict[str, dict[str, str]] = {}
    lines = []
    for dotted, value in flat.items():
        head, _, leaf = dotted.partition(".")
        if leaf:
            nested.setdefault(head, {})[leaf] = value
        else:
            lines.append(f"{head}: {value}")
    for head, values in nested.items():
        lines.append(f"{head}:")
        lines += [f"  {leaf}: {value}" for leaf, value in values.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("raw", ["0777", "1e3", "yes", "0x1F", "12:30", ".inf", "null"])
def test_secrets_stay_the_exact_string_from_every_layer(tmp_path: Path, raw: str) -> None:
    keys = list(SECRETS)
    from_file = load_settings(_config_file(tmp_path / "c.yaml", dict.fromkeys(keys, raw)), environ={})
    env = {f"HOMEWARD_{k.upper().replace('.', '__')}": raw for k in keys}
    from_env = load_settings(environ=env)
    from_set = load_settings(overrides=parse_assignments(f"{k}={raw}" for k in keys), environ={})
    for key in keys:
        assert _value(from_file, key) == raw, key
        assert _value(from_env, key) == raw, key
        assert _value(from_set, key) == raw, key


def _nested(keys: list[str], raw: str) -> dict[str, object]:
    out: dict[str, dict[str, str] | str] = {}
    for dotted in keys:
        head, _, leaf = dotted.partition(".")
        if leaf:
            out.setdefault(head, {})[leaf] = raw  # type: ignore[index]
        else:
            out[head] = raw
    return out


def test_other_keys_keep_their_yaml_types(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "salt: 0777\ncrawl: {max_pages: 0x10, petfinder_key: ~, sources_file: ~}\nreport: {smtp_port: '587'}\n"
    )
    s = load_settings(cfg, environ={})
    assert (s.salt, s.crawl.petfinder_key) == ("0777", "~")
    assert (s.crawl.max_pages, s.crawl.sources_file, s.report.smtp_port) == (16, None, 587)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("salt: [S3KR1T-a, S3KR1T-b]\n", "'salt' is a secret and expects a string, got a list"),
        ("crawl: {petfinder_key: {S3KR1T: S3KR1T}}\n", "'crawl.petfinder_key' is a secret and expects a string"),
        ("storage_options: [S3KR1T]\n", "'storage_options' expects a mapping of strings, got a list"),
        ("report: {smtp_password: 'S3KR1T-unclosed\n", "is not valid YAML"),
        ('salt: "S3KR1T"\n  crawl: x\n', "is not valid YAML"),
    ],
)
def test_bad_secret_is_a_clear_error_without_its_value(tmp_path: Path, text: str, message: str) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    with pytest.raises(ConfigError, match=message) as err:
        load_settings(cfg, environ={})
    assert "S3KR1T" not in str(err.value)


def test_secrets_stay_out_of_repr() -> None:
    s = load_settings(overrides=_nested(list(SECRETS), "S3KR1T"), environ={})
    assert "S3KR1T" not in repr(s)


def test_cli_config_error_on_a_secret_is_one_line_without_it(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("crawl:\n  petfinder_secret: [S3KR1T]\n")
    out = subprocess.run(
        [sys.executable, "-m", "ray_jobs.cli", "--config", str(cfg), "sources"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "'crawl.petfinder_secret' is a secret" in lines[0], out.stderr
    assert "S3KR1T" not in out.stderr + out.stdout


def _files_holding(root: Path, needle: bytes) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


@pytest.mark.slow
def test_crawl_gets_the_exact_secrets_and_leaves_none_behind(tmp_path: Path) -> None:
    """The crawl process hashes contacts with the salt it was handed: the same hash proves the exact string got
    there; no file of the run, no stored run parameter and no output holds a secret."""
    with MockSite() as site:
        data = ListingSite(site, n=3, per_page=5, photos=False)
        settings = crawl_settings(tmp_path, [site_source(site.url)])
        cfg = _config_file(tmp_path / "secrets.yaml", {**SECRETS, "salt": "0777"})
        cmd = [sys.executable, "-m", "ray_jobs.cli", "--config", str(cfg), "--data-dir", settings.data_dir]
        cmd += ["--set", f"crawl.sources_file={settings.crawl.sources_file}", "--set", "crawl.download_delay_s=0"]
        cmd += ["--set", "crawl.autothrottle=false", "crawl", "--source", "mock"]
        out = subprocess.run(
            cmd, capture_output=True, text=True, cwd=REPO, timeout=300, env={**os.environ, "TMPDIR": str(tmp_path)}
        )
        assert out.returncode == 0, out.stderr[-2000:]
        assert json.loads(out.stdout.strip().splitlines()[-1])["status"] == "ok"
        assert "S3KR1T" not in out.stdout + out.stderr

    lost = listings(settings)["l100"]
    phone = redact(data.posts["l100"]["description"]).phones[0]
    assert lost["contact_hash"] == ids.salted_hash(canonical_contact(phone), "0777")
    assert _files_holding(Path(settings.data_dir), MARK) == []
    assert not list(Path(settings.data_dir).rglob("*settings*"))
    stored = RunsDB(settings.duckdb).query("SELECT CAST(parameters AS VARCHAR), coalesce(message, '') FROM crawl_runs")
    assert stored and all("S3KR1T" not in " ".join(row) for row in stored)


def _wait_for(predicate: object, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


@pytest.mark.slow
def test_a_killed_parent_leaves_no_secret_on_disk(tmp_path: Path) -> None:
    with MockSite() as site:
        ListingSite(site, n=1, photos=False)
        site.misbehave("/catalog/1.html", "slow", delay=120)  # the crawl process waits here while we kill its parent
        settings = crawl_settings(tmp_path, [site_source(site.url)])
        (tmp_path / "tmp").mkdir()
        cfg = _config_file(tmp_path / "secrets.yaml", SECRETS)
        cmd = [sys.executable, "-m", "ray_jobs.cli", "--config", str(cfg), "--data-dir", settings.data_dir]
        cmd += ["--set", f"crawl.sources_file={settings.crawl.sources_file}", "crawl", "--source", "mock"]
        env = {**os.environ, "TMPDIR": str(tmp_path / "tmp")}
        parent = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        logs = Path(settings.data_dir) / "crawl_logs"
        try:
            _wait_for(lambda: any(logs.glob("*.pid")) and site.hits("/catalog/1.html") > 0)
            child = json.loads(next(logs.glob("*.pid")).read_text())["pid"]
            assert MARK not in Path(f"/proc/{child}/cmdline").read_bytes()  # argv is readable by every user
            parent.kill()
            parent.wait(timeout=30)
            scanned = [Path(settings.data_dir), tmp_path / "tmp"]
            assert [f for root in scanned for f in _files_holding(root, MARK)] == []
        finally:
            parent.kill()
            parent.wait(timeout=30)
            for pid_file in logs.glob("*.pid"):
                pid = json.loads(pid_file.read_text())["pid"]
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                _wait_for(lambda pid=pid: not Path(f"/proc/{pid}").exists() or _zombie(pid), timeout_s=30)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")
    except OSError:
        return True
