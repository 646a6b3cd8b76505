"""Load a local HTML file in real headless Chromium and report what the page did.

Chromium is driven over the DevTools protocol on `--remote-debugging-pipe` (JSON messages
ended by NUL on file descriptors 3 and 4): no port, no extra package. The page's console
errors, uncaught exceptions, browser log errors and every request it starts are collected
until the load event, then a full-page screenshot is taken.

Chromium is Debian's `chromium` package. If it is missing, `chromium_executable` installs it
with apt-get (as the test set-up of a fresh CI machine must) and fails, never skips, when
that is impossible.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--remote-debugging-pipe",
    "--window-size=1280,900",
)
INSTALL = (["apt-get", "update"], ["apt-get", "install", "-y", "chromium"])


def _find() -> str | None:
    """`$FEDVLM_CHROMIUM`, else Debian's `chromium`, else a Google Chrome already installed."""
    names = [os.environ.get("FEDVLM_CHROMIUM", ""), "chromium", "google-chrome"]
    return next((found for name in names if name and (found := shutil.which(name))), None)


def chromium_executable() -> str:
    """Path of Chromium, installed with apt-get when missing; the test fails if it cannot be."""
    found = _find()
    if found:
        return found
    problems = []
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        problems.append("not root or no apt-get here")
    else:
        for command in INSTALL:
            done = subprocess.run(command, capture_output=True, text=True, timeout=900)
            if done.returncode != 0:
                problems.append(f"{' '.join(command)} failed: {done.stderr[-500:]}")
                break
    found = _find()
    if not found:
        pytest.fail(
            "Chromium is not installed and could not be installed "
            f"({'; '.join(problems) or 'apt-get ran but no chromium on PATH'}). "
            "Install it with: apt-get update && apt-get install -y chromium"
        )
    return found


@dataclass
class PageLoad:
    """What loading one page did."""

    console_errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)  # every URL the page asked for
    screenshot: bytes = b""
    title: str = ""

    def network_requests(self, page_url: str) -> list[str]:
        """Requests other than the page itself and inline `data:` URLs."""
        return [u for u in self.requests if u != page_url and not u.startswith("data:")]


class _Pipe:
    """A DevTools session over Chromium's pipe: commands out, responses and events in."""

    def __init__(self, to_browser: int, from_browser: int) -> None:
        self.out, self.inp = to_browser, from_browser
        self.buffer = b""
        self.next_id = 0
        self.events: list[dict[str, Any]] = []

    def _read(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.inp], [], [], left)[0]:
                raise TimeoutError("Chromium did not answer in time")
            chunk = os.read(self.inp, 1 << 20)
            if not chunk:
                raise RuntimeError("Chromium closed the DevTools pipe")
            self.buffer += chunk
        message, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(message)

    def call(self, method: str, session: str | None = None, timeout: float = 30, **params):
        self.next_id += 1
        command = {"id": self.next_id, "method": method, "params": params}
        if session:
            command["sessionId"] = session
        os.write(self.out, json.dumps(command).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            message = self._read(deadline)
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    def wait_for(self, method: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == method for e in self.events):
            self.events.append(self._read(deadline))

    def drain(self, seconds: float) -> None:
        """Collect the events that arrive within ``seconds`` (late requests, errors)."""
        deadline = time.monotonic() + seconds
        try:
            while True:
                self.events.append(self._read(deadline))
        except TimeoutError:
            pass


def _collect(events: list[dict[str, Any]], load: PageLoad) -> None:
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in params["args"])
            load.console_errors.append(f"console.{params['type']}: {text}")
        elif method == "Runtime.exceptionThrown":
            load.console_errors.append(f"exception: {params['exceptionDetails'].get('text')}")
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            load.console_errors.append(f"log: {params['entry'].get('text')}")
        elif method == "Network.requestWillBeSent":
            load.requests.append(params["request"]["url"])


def _high(fd: int) -> int:
    """A duplicate of ``fd`` numbered 10 or above; ``fd`` itself is closed."""
    high = fcntl.fcntl(fd, fcntl.F_DUPFD, 10)
    os.close(fd)
    return high


def load_page(html: Path, timeout: float = 60) -> PageLoad:
    """Open ``html`` in headless Chromium; return its errors, requests and a screenshot."""
    executable = chromium_executable()
    commands_r, commands_w = os.pipe()
    replies_r, replies_w = os.pipe()
    # Above 10, so the shell's `3<&a 4>&b` cannot overwrite one end with the other.
    commands_r, replies_w = (_high(fd) for fd in (commands_r, replies_w))
    with (
        tempfile.TemporaryDirectory(prefix="fedvlm-chromium-") as profile,
        tempfile.TemporaryFile() as log,
    ):
        # bash puts the pipe ends on the descriptors 3 and 4 Chromium expects.
        process = subprocess.Popen(
            [
                "bash",  # dash (sh) only knows descriptors 0-9
                "-c",
                f'exec "$0" "$@" 3<&{commands_r} 4>&{replies_w}',
                executable,
                *FLAGS,
                f"--user-data-dir={profile}",
                "about:blank",
            ],
            pass_fds=(commands_r, replies_w),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        os.close(commands_r)
        os.close(replies_w)
        pipe = _Pipe(commands_w, replies_r)
        try:
            target = pipe.call("Target.createTarget", url="about:blank", timeout=timeout)
            session = pipe.call("Target.attachToTarget", targetId=target["targetId"], flatten=True)[
                "sessionId"
            ]
            for domain in ("Runtime", "Log", "Network", "Page"):
                pipe.call(f"{domain}.enable", session)
            pipe.events.clear()  # about:blank's own events
            url = html.resolve().as_uri()
            pipe.call("Page.navigate", session, url=url)
            pipe.wait_for("Page.loadEventFired", timeout)
            pipe.drain(1.0)
            load = PageLoad()
            _collect(pipe.events, load)
            size = pipe.call("Page.getLayoutMetrics", session)["cssContentSize"]
            shot = pipe.call(
                "Page.captureScreenshot",
                session,
                format="png",
                captureBeyondViewport=True,
                clip={"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1},
            )
            load.screenshot = base64.b64decode(shot["data"])
            title = pipe.call("Runtime.evaluate", session, expression="document.title")
            load.title = title["result"].get("value", "")
            pipe.call("Browser.close")
        except (RuntimeError, TimeoutError) as error:
            log.seek(0)
            tail = log.read().decode(errors="replace")[-2000:]
            raise RuntimeError(f"{error}; Chromium's stderr ends with:\n{tail}") from error
        finally:
            os.close(commands_w)
            os.close(replies_r)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    return load
