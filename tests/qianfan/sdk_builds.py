"""The official Qianfan Java (0.1.6) and Go (v0.0.15) SDKs, built offline from ../shared/sdks/
(its README says how), and the Node.js SDK (@baiducloud/qianfan 0.2.4, installed with npm
from the registry), together with the client programs in sdk_clients/, and run as
long-lived processes that take one JSON request per line and answer one JSON line each.

Builds are cached under ~/.cache/wharf-test-sdks/<key> (WHARF_TEST_SDK_CACHE), the key
being a hash of the SDK archives (or the npm package spec), the client sources and the
toolchain version, so a session builds each SDK at most once and later sessions not at
all. The SDK sources are unpacked there, never into the repository.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import threading
from pathlib import Path

HERE = Path(__file__).resolve().parent
CLIENTS = HERE / "sdk_clients"
SDKS = Path(os.environ.get("WHARF_QIANFAN_SDKS", HERE.parents[2] / "shared" / "sdks"))
CACHE = Path(os.environ.get("WHARF_TEST_SDK_CACHE", Path.home() / ".cache" / "wharf-test-sdks"))
JAVA_TAR = "bce-qianfan-sdk-java-0.1.6-cf94b38b.tar.gz"
GO_TARS = ("bce-qianfan-sdk-go-v0.0.15-3eb1bcec.tar.gz", "bce-sdk-go-v0.9.164-1171652.tar.gz")
NODE_SDK = "@baiducloud/qianfan@0.2.4"         # pinned, exact: what the Node tests were read against
JARS = [f"/usr/share/java/{j}.jar" for j in ("gson", "httpclient5", "httpcore5", "httpcore5-h2", "slf4j-api",
                                            "slf4j-nop")]


class Unavailable(Exception):
    """What is missing to build an SDK (the tests skip with it)."""


def _key(parts: list[Path], toolchain: list[str], extra: str = "") -> str:
    version = subprocess.run(toolchain, capture_output=True, text=True, check=False)
    h = hashlib.sha256((version.stdout + version.stderr + extra).encode())
    for p in parts:
        h.update(p.name.encode() + b"\0" + p.read_bytes())
    return h.hexdigest()[:16]


def _cached(name: str, key: str, build) -> Path:
    """CACHE/name-key, built by build(tmp_dir) into a fresh folder then renamed into place."""
    final = CACHE / f"{name}-{key}"
    if (final / "ok").exists():
        return final
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=CACHE))
    try:
        build(tmp)
        (tmp / "ok").write_text("")
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _run(cmd: list[str], **kw) -> None:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False, **kw)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} ... failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")


def _need(tools: list[str], files: list[Path]) -> None:
    missing = [t for t in tools if shutil.which(t) is None] + [str(f) for f in files if not f.exists()]
    if missing:
        raise Unavailable("missing " + ", ".join(missing) + " (RECIPES.md section 6; .ci/run installs them)")


def java_command() -> list[str]:
    """The command that runs WharfSdkClient."""
    return ["java", "-cp", java_classpath(), "WharfSdkClient"]


def java_classpath() -> str:
    """Build the Java SDK and WharfSdkClient (~8 s); the classpath with both and their jars."""
    src = CLIENTS / "java" / "WharfSdkClient.java"
    _need(["javac", "java"], [SDKS / JAVA_TAR, *map(Path, JARS)])
    cp = ":".join(JARS)

    def build(d: Path) -> None:
        with tarfile.open(SDKS / JAVA_TAR) as t:
            t.extractall(d / "src", filter="data")
        java_src = d / "src" / "bce-qianfan-sdk" / "java" / "src" / "main" / "java"
        srcs = sorted(str(p) for p in java_src.rglob("*.java"))
        srcs.append(str(SDKS / "httpclient5-5.3.1" / "BearerToken.java"))     # imported, unused; Debian's lacks it
        (d / "srcs").write_text("\n".join(srcs))
        _run(["javac", "--release", "8", "-nowarn", "-encoding", "UTF-8", "-cp", cp, "-d", str(d / "classes"),
              f"@{d / 'srcs'}"])
        _run(["javac", "--release", "8", "-nowarn", "-encoding", "UTF-8", "-cp", f"{d / 'classes'}:{cp}",
              "-d", str(d / "client"), str(src)])
        shutil.rmtree(d / "src")

    d = _cached("java", _key([SDKS / JAVA_TAR, src], ["javac", "-version"]), build)
    return f"{d / 'client'}:{d / 'classes'}:{cp}"


def go_command() -> list[str]:
    """Build the Go SDK and sdk_clients/go in GOPATH mode, offline, with Debian's Go sources (~15 s)."""
    srcs = sorted((CLIENTS / "go").glob("*.go"))
    _need(["go"], [SDKS / t for t in GO_TARS] + [Path("/usr/share/gocode/src/github.com/spf13/viper")])

    def build(d: Path) -> None:
        gopath = d / "gopath" / "src" / "github.com" / "baidubce"
        for t in GO_TARS:
            with tarfile.open(SDKS / t) as tf:
                tf.extractall(gopath, filter="data")
        env = {**os.environ, "GO111MODULE": "off", "GOPATH": f"{d / 'gopath'}:/usr/share/gocode",
               "GOPROXY": "off", "GOFLAGS": "", "CGO_ENABLED": "0", "GOCACHE": str(d / "gocache")}
        _run(["go", "build", "-o", str(d / "client"), "."], cwd=CLIENTS / "go", env=env)
        shutil.rmtree(d / "gopath")
        shutil.rmtree(d / "gocache", ignore_errors=True)

    d = _cached("go", _key([SDKS / t for t in GO_TARS] + srcs, ["go", "version"]), build)
    return [str(d / "client")]


def go_sdk_env() -> dict:
    """A GOPATH holding the Go SDK and a build cache warmed on sdk_clients/go (~15 s once):
    the environment in which `go build` builds any program importing the SDK in a second
    or two (the console's sample code)."""
    _need(["go"], [SDKS / t for t in GO_TARS] + [Path("/usr/share/gocode/src/github.com/spf13/viper")])

    def env(d: Path) -> dict:
        return {**os.environ, "GO111MODULE": "off", "GOPATH": f"{d / 'gopath'}:/usr/share/gocode",
                "GOPROXY": "off", "GOFLAGS": "", "CGO_ENABLED": "0", "GOCACHE": str(d / "gocache")}

    def build(d: Path) -> None:
        for t in GO_TARS:
            with tarfile.open(SDKS / t) as tf:
                tf.extractall(d / "gopath" / "src" / "github.com" / "baidubce", filter="data")
        _run(["go", "build", "-o", os.devnull, "."], cwd=CLIENTS / "go", env=env(d))

    # GOCACHE keys its entries on absolute paths: the folder's final name must be in them.
    key = _key([SDKS / t for t in GO_TARS], ["go", "version"])
    final = CACHE / f"go-sdk-{key}"
    if not (final / "ok").exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(final, ignore_errors=True)
        build(final)
        (final / "ok").write_text("")
    return env(final)


def node_sdk_dir() -> Path:
    """A folder whose node_modules holds the Node.js SDK, `npm install`ed once from the
    registry (~15 s; install scripts off: the package has none it needs). A program in it,
    or in a folder with a node_modules link to it, imports "@baiducloud/qianfan" as a user's
    does (ES modules ignore NODE_PATH). No npm or no registry: Unavailable."""
    _need(["node", "npm"], [])

    def build(d: Path) -> None:
        (d / "package.json").write_text('{"name": "wharf-test-qianfan-node", "private": true}\n')
        cmd = ["npm", "install", "--no-audit", "--no-fund", "--ignore-scripts", "--save-exact",
               "--fetch-retries=1", "--fetch-timeout=60000", NODE_SDK]
        r = subprocess.run(cmd, cwd=d, capture_output=True, text=True, timeout=600, check=False)
        if r.returncode != 0:
            out = r.stdout[-2000:] + r.stderr[-2000:]
            if re.search(r"E(NOTFOUND|AI_AGAIN|CONNREFUSED|CONNRESET|TIMEDOUT|NETUNREACH|HOSTUNREACH)|"
                         r"network|E40[13]|E5\d\d|ERR_SOCKET", out):
                raise Unavailable(f"npm could not reach its registry for {NODE_SDK}:\n{out[-1500:]}")
            raise RuntimeError(f"npm install {NODE_SDK} failed ({r.returncode}):\n{out}")

    return _cached("node-sdk", _key([], ["npm", "--version"], NODE_SDK), build)


def node_command() -> list[str]:
    """sdk_clients/node/client.mjs copied beside a node_modules link to the installed SDK."""
    src = CLIENTS / "node" / "client.mjs"
    sdk = node_sdk_dir()

    def build(d: Path) -> None:
        shutil.copy(src, d / "client.mjs")
        (d / "node_modules").symlink_to(sdk / "node_modules", target_is_directory=True)

    d = _cached("node-client", _key([src], ["node", "--version"], str(sdk)), build)
    return ["node", str(d / "client.mjs")]


class SdkProcess:
    """A client program: `proc(**request)` -> its JSON reply. One request at a time."""

    def __init__(self, cmd: list[str], env: dict, workdir: Path):
        self.cmd, self.env, self.workdir = cmd, env, workdir
        self.log = workdir / "stderr.log"
        self._start()

    def _start(self) -> None:
        # A clean working directory: both SDKs read a .env file from it.
        self.proc = subprocess.Popen(self.cmd, cwd=self.workdir, env=self.env, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.log.open("a"), text=True,
                                     encoding="utf-8", bufsize=1)

    def __call__(self, timeout: float = 120, **request) -> dict:
        if self.proc.poll() is not None:      # killed by an earlier test's timeout: start afresh
            self._start()
        self.proc.stdin.write(json.dumps(request, ensure_ascii=False) + "\n")
        self.proc.stdin.flush()
        timer = threading.Timer(timeout, self.proc.kill)      # a hung SDK fails the test, not the session
        timer.start()
        try:
            line = self.proc.stdout.readline()
        finally:
            hung = not timer.is_alive() and not line
            timer.cancel()
        if not line:
            why = f"no reply within {timeout:.0f} s (killed)" if hung else f"exited with {self.proc.poll()}"
            raise RuntimeError(f"SDK client {why} on {request.get('kind')} {request.get('auth')}:\n"
                               f"{self.log.read_text()[-3000:]}")
        return json.loads(line)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
