"""A real browser for the report page: Debian's Chromium, headless, driven over the DevTools
protocol through a pipe (--remote-debugging-pipe: NUL-separated JSON on file descriptors 3 and 4,
the way Playwright drives it), so it needs no port, no websocket library and no downloaded browser.
It opens a page, collects what the console and the network saw, evaluates a script in the page and
takes a screenshot.

    python -m tests.browser results/demo/<time>/report.html docs/report-page.png   # a screenshot
"""
from __future__ import annotations

import base64
import fcntl
import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
# the flags a container needs (no sandbox, no GPU) and the ones that keep it off the network
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage", "--hide-scrollbars",
         "--mute-audio", "--remote-debugging-pipe"]


class BrowserError(RuntimeError):
    pass


def find_chromium() -> str | None:
    return CHROMIUM if os.access(CHROMIUM, os.X_OK) else shutil.which("chromium")


@dataclass
class PageLog:
    """What a page did while it loaded: console errors, uncaught exceptions, log errors, requests."""
    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)


class Chromium:
    def __init__(self, executable: str | None = None, width: int = 1280, height: int = 900):
        exe = executable or find_chromium()
        if not exe:
            raise BrowserError("no chromium here (bash tests/install_browser.sh installs Debian's)")
        self.width, self.height = width, height
        self.profile = tempfile.mkdtemp(prefix="report-browser-")
        self._stderr = tempfile.TemporaryFile()       # the browser's own log, for a failure's message
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        # the browser reads commands on fd 3 and writes answers on fd 4
        r = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD, 10)
        w = fcntl.fcntl(from_browser_w, fcntl.F_DUPFD, 10)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self.proc = subprocess.Popen(["bash", "-c", f'exec "$0" "$@" 3<&{r} 4>&{w}', exe, *FLAGS,
                                      f"--user-data-dir={self.profile}", f"--window-size={width},{height}"],
                                     pass_fds=(r, w), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=self._stderr, start_new_session=True)
        os.close(r)
        os.close(w)
        self._next = 0
        self._answers: dict[int, dict] = {}
        self._events: queue.Queue = queue.Queue()
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        buf = b""
        while True:
            chunk = os.read(self._from_browser, 1 << 16)
            if not chunk:
                with self._cond:
                    self._cond.notify_all()
                return
            buf += chunk
            while b"\0" in buf:
                raw, buf = buf.split(b"\0", 1)
                msg = json.loads(raw)
                if "id" in msg:
                    with self._cond:
                        self._answers[msg["id"]] = msg
                        self._cond.notify_all()
                else:
                    self._events.put(msg)

    def send(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 60) -> dict:
        self._next += 1
        msg = {"id": self._next, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._to_browser, json.dumps(msg).encode() + b"\0")
        deadline = time.time() + timeout
        with self._cond:
            while self._next not in self._answers:
                left = deadline - time.time()
                if left <= 0 or self.proc.poll() is not None:
                    state = "exited" if self.proc.poll() is not None else "silent"
                    raise BrowserError(f"no answer to {method} (browser {state}): {self.stderr_tail()}")
                self._cond.wait(left)
            answer = self._answers.pop(self._next)
        if "error" in answer:
            raise BrowserError(f"{method}: {answer['error']}")
        return answer.get("result", {})

    def open(self, url: str, timeout: float = 60) -> tuple[str, PageLog]:
        """A new tab at url, loaded; (session id, what the console and the network saw)."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for method in ("Page.enable", "Runtime.enable", "Log.enable", "Network.enable"):
            self.send(method, session=session)
        self.send("Emulation.setDeviceMetricsOverride", {"width": self.width, "height": self.height,
                                                          "deviceScaleFactor": 1, "mobile": False}, session)
        log = PageLog()
        self.send("Page.navigate", {"url": url}, session)
        deadline = time.time() + timeout
        loaded = False
        while not loaded:
            try:
                ev = self._events.get(timeout=max(0.1, deadline - time.time()))
            except queue.Empty:
                raise BrowserError(f"{url} did not load in {timeout} s") from None
            loaded = self._note(ev, session, log, "Page.loadEventFired")
        time.sleep(0.3)               # late console messages
        while not self._events.empty():
            self._note(self._events.get(), session, log, "")
        return session, log

    @staticmethod
    def _note(ev: dict, session: str, log: PageLog, until: str) -> bool:
        if ev.get("sessionId") != session:
            return False
        method, p = ev.get("method"), ev.get("params", {})
        if method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            log.errors.append("console: " + " ".join(str(a.get("value", a.get("description", ""))) for a in p["args"]))
        elif method == "Runtime.exceptionThrown":
            d = p.get("exceptionDetails", {})
            log.errors.append("exception: " + str(d.get("exception", {}).get("description") or d.get("text")))
        elif method == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            log.errors.append(f"log: {p['entry'].get('text')} {p['entry'].get('url', '')}")
        elif method == "Network.requestWillBeSent":
            log.requests.append(p["request"]["url"])
        return method == until

    def evaluate(self, session: str, expression: str):
        res = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True},
                        session)
        if "exceptionDetails" in res:
            raise BrowserError(f"the script failed in the page: {res['exceptionDetails']}")
        return res["result"].get("value")

    def screenshot(self, session: str, path: str | Path, height: int | None = None) -> Path:
        """A PNG of the page's top `height` px (the whole page when None), at the window's width."""
        full = self.evaluate(session, "document.documentElement.scrollHeight")
        h = min(full, height) if height else full
        data = self.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True,
                                                    "clip": {"x": 0, "y": 0, "width": self.width, "height": h,
                                                             "scale": 1}}, session)["data"]
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def stderr_tail(self, chars: int = 2000) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")[-chars:]

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                self.send("Browser.close", timeout=10)
                self.proc.wait(timeout=10)
        except (BrowserError, OSError, subprocess.TimeoutExpired):
            pass
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, 9)
                self.proc.wait()
            for fd in (self._to_browser, self._from_browser):
                try:
                    os.close(fd)
                except OSError:
                    pass
            self._stderr.close()
            shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> "Chromium":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3):
        print("usage: python -m tests.browser PAGE.html OUT.png [HEIGHT_PX]", file=sys.stderr)
        return 2
    page, out = Path(argv[0]).resolve(), Path(argv[1])
    with Chromium() as b:
        session, log = b.open(page.as_uri())
        b.screenshot(session, out, int(argv[2]) if len(argv) == 3 else None)
    for e in log.errors:
        print(e, file=sys.stderr)
    print(out)
    return 1 if log.errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
