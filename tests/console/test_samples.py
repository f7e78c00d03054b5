"""The playground's sample code for a Qianfan custom service, in the languages seeds 001, 002
and 004 show it in: curl, Python (`qianfan`), Node.js (`@baiducloud/qianfan`), Go and Java (the
official SDKs). Rendered in a real browser for the service's prefixed endpoint and this
server's URL, with placeholders until the fill button puts a new credential in, then each
one run against the live server with its real SDK (Go and Java built, Node.js's
@baiducloud/qianfan installed from npm, by tests/qianfan/sdk_builds.py, cached)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import uuid

import pytest
from playwright.sync_api import expect

from tests.console.test_console import MODEL, copied_code, set_param, sign_in
from tests.qianfan import sdk_builds

LANGS = ("curl", "python", "node", "go", "java")
PROMPT = "你好"


@pytest.fixture(scope="module")
def samples(server, browser):
    """One account, one chat service, the playground on it: each language's sample as shown
    first (placeholders) and after the fill button (a new credential), copied as a user would."""
    acct, key = server.account(f"samples-{uuid.uuid4().hex[:6]}")
    svc = server.platform.services.create(acct.id, "test1", MODEL, "chat")
    ctx = browser.new_context(base_url=server.url, permissions=["clipboard-read", "clipboard-write"])
    ctx.set_default_timeout(30_000)
    page = ctx.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    sign_in(page, key, "#/playground")
    page.select_option("#pg-dialect", "qianfan-chat")
    page.select_option("#pg-target", svc.endpoint)
    set_param(page, "max_output_tokens", 8)
    page.fill("#pg-prompt", PROMPT)
    shown = {lang: page.locator(f"#pg-code-{lang}").text_content() for lang in LANGS}
    page.click("#pg-fill")
    expect(page.locator("#pg-code-python")).not_to_contain_text("<YOUR_")
    filled = {lang: copied_code(page, lang) for lang in LANGS}
    cred = next(c for c in server.platform.credentials.list(acct.id) if c.kind == "qianfan_app")
    ctx.close()
    assert not errors
    return {"account": acct, "service": svc, "placeholder": shown, "filled": filled, "ak": cred.public_id}


def test_every_language_renders_for_the_service(server, samples):
    ep = samples["service"].endpoint
    assert re.fullmatch(r"[a-z0-9]{8}_test1", ep)                 # the prefixed endpoint, not "test1"
    for lang, code in samples["placeholder"].items():
        assert "<YOUR_QIANFAN_API_KEY>" in code and "<YOUR_QIANFAN_SECRET_KEY>" in code, lang
        assert server.url in code, lang
        assert ep in code, lang
    s = samples["placeholder"]
    assert "import qianfan" in s["python"] and f'ChatCompletion(endpoint="{ep}")' in s["python"]
    assert 'from "@baiducloud/qianfan"' in s["node"] and f'Endpoint: "{ep}"' in s["node"]
    assert "github.com/baidubce/bce-qianfan-sdk/go/qianfan" in s["go"] and f'qianfan.WithEndpoint("{ep}")' in s["go"]
    assert "com.baidubce.qianfan.Qianfan" in s["java"] and f'.endpoint("{ep}")' in s["java"]
    assert f"/wenxinworkshop/chat/{ep}" in s["curl"]


def test_fill_puts_a_new_credential_in_every_language(samples):
    for lang, code in samples["filled"].items():
        assert "<YOUR_" not in code and samples["ak"] in code, lang


def _calls(server, samples) -> list[dict]:
    return [r for r in server.platform.usage.records(samples["account"].id)
            if r["service_id"] == samples["service"].id]


def _run(cmd, tmp_path, env=None, timeout=120) -> subprocess.CompletedProcess:
    """In a clean folder with no QIANFAN_* of ours: the SDKs read both the environment and a .env."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("QIANFAN_")}
    base["HOME"] = str(tmp_path)                    # the Python SDK writes a cache under ~
    return subprocess.run(cmd, cwd=tmp_path, env={**base, **(env or {})}, capture_output=True, text=True,
                          timeout=timeout, check=False)


def _ran_once(server, samples, before: int, res: subprocess.CompletedProcess) -> None:
    assert res.returncode == 0, (res.stdout[-2000:], res.stderr[-3000:])
    assert res.stdout.strip(), res.stderr[-2000:]
    deadline = time.monotonic() + 10              # a stream's usage is settled as it closes
    while len(calls := _calls(server, samples)) == before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(calls) == before + 1 and calls[0]["status"] == "ok", calls[:2]    # newest first


def test_curl_sample_runs(server, samples, tmp_path):
    before = len(_calls(server, samples))
    (tmp_path / "sample.sh").write_text(samples["filled"]["curl"])
    res = _run(["bash", "-e", "-o", "pipefail", "sample.sh"], tmp_path,
               {"PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]})
    _ran_once(server, samples, before, res)
    assert '"is_end":true' in res.stdout.replace(" ", "")


def test_python_sample_runs_with_the_qianfan_sdk(server, samples, tmp_path):
    before = len(_calls(server, samples))
    (tmp_path / "sample.py").write_text(samples["filled"]["python"])
    _ran_once(server, samples, before, _run([sys.executable, "sample.py"], tmp_path))


def test_go_sample_builds_and_runs_with_the_go_sdk(server, samples, tmp_path):
    try:
        env = sdk_builds.go_sdk_env()
    except sdk_builds.Unavailable as exc:
        pytest.skip(f"Qianfan Go SDK: {exc}")
    src = tmp_path / "demo"
    src.mkdir()
    (src / "main.go").write_text(samples["filled"]["go"])
    assert subprocess.run(["gofmt", "-l", "."], cwd=src, capture_output=True, text=True,
                          check=False).stdout == ""
    build = subprocess.run(["go", "build", "-o", str(tmp_path / "demo-bin"), "."], cwd=src, env=env,
                           capture_output=True, text=True, timeout=300, check=False)
    assert build.returncode == 0, build.stderr[-3000:]
    before = len(_calls(server, samples))
    _ran_once(server, samples, before, _run([str(tmp_path / "demo-bin")], tmp_path))


def test_java_sample_builds_and_runs_with_the_java_sdk(server, samples, tmp_path):
    try:
        cp = sdk_builds.java_classpath()
    except sdk_builds.Unavailable as exc:
        pytest.skip(f"Qianfan Java SDK: {exc}")
    code = samples["filled"]["java"]
    (tmp_path / "Demo.java").write_text(code)
    build = subprocess.run(["javac", "-encoding", "UTF-8", "-cp", cp, "-d", str(tmp_path / "classes"),
                            str(tmp_path / "Demo.java")], capture_output=True, text=True, timeout=300, check=False)
    assert build.returncode == 0, build.stderr[-3000:]
    # Java takes its base URL from the environment only: run it as the sample's header says.
    env = dict(re.findall(r"^//\s+export (\w+)=(\S+)$", code, re.MULTILINE))
    assert env == {"QIANFAN_BASE_URL": server.url}
    before = len(_calls(server, samples))
    res = _run(["java", "-cp", f"{tmp_path / 'classes'}:{cp}", "Demo"], tmp_path, env)
    _ran_once(server, samples, before, res)


def test_node_sample_runs_with_the_node_sdk(server, samples, tmp_path):
    """Parsed by Node as the ES module it is, then run as the sample's header says (`npm install
    @baiducloud/qianfan`: here a node_modules link to the one sdk_builds.py installed)."""
    if shutil.which("node") is None:
        pytest.skip("no node")
    (tmp_path / "sample.mjs").write_text(samples["filled"]["node"])
    check = _run(["node", "--check", "sample.mjs"], tmp_path)
    assert check.returncode == 0, check.stderr
    code = samples["filled"]["node"]
    assert f'setEnvVariable("QIANFAN_BASE_URL", "{server.url}")' in code
    assert 'await client.chat({' in code and '"stream": true' in code and "for await (const chunk of stream)" in code
    try:
        sdk = sdk_builds.node_sdk_dir()
    except sdk_builds.Unavailable as exc:
        pytest.skip(f"Qianfan Node.js SDK: {exc}")
    (tmp_path / "node_modules").symlink_to(sdk / "node_modules", target_is_directory=True)
    before = len(_calls(server, samples))
    _ran_once(server, samples, before, _run(["node", "sample.mjs"], tmp_path))
