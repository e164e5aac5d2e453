"""Open the built documentation site in headless Chromium and check that it really renders.

    mkdocs build --strict && python scripts/check_docs.py [--site site] [--out site-check]

Serves the site on 127.0.0.1, drives Debian's `chromium` through the Chrome DevTools protocol
(a websocket; `websocket-client`, from the docs extra, is the only dependency) and loads the
home page, a tutorial and the API reference. A page fails on a JavaScript error or a console
error, a request that fails or leaves 127.0.0.1 (the site must render offline), an image that
did not load, or math left as raw LaTeX; the tutorial must show its plots and typeset formulas.
Screenshots of each page go to --out. Exit status 0 when every check holds, 1 otherwise (each
problem on its own line), 2 when Chromium or the site is missing.
"""
from __future__ import annotations

import argparse
import base64
import functools
import http.server
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

try:
    import websocket  # websocket-client, from the docs extra
    from websocket import WebSocketException, WebSocketTimeoutException
except ImportError:  # main() says what to install
    websocket = None

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--hide-scrollbars",
                  "--remote-debugging-port=0", "--window-size=1280,900"]
# (path under the site, what the page must show)
PAGES = [("", "home"), ("tutorials/03_pact/", "tutorial"), ("api/tinypact/", "api")]
LOAD_TIMEOUT = 60.0

# Runs in the page after it loaded: what a reader would see go wrong.
PAGE_REPORT_JS = r"""
(() => {
  const broken = [...document.images]
    .filter(img => !img.complete || img.naturalWidth === 0).map(img => img.src);
  const plots = [...document.querySelectorAll('.jp-OutputArea-output img')]
    .filter(img => img.naturalWidth > 100).length;
  // The page's own formulas (the navigation's copies of headings may be hidden, by design).
  const maths = [...document.querySelectorAll('article math')];
  const unrendered = maths.filter(m => m.getBoundingClientRect().width === 0).length;
  // Raw LaTeX left in prose: a $...$ span holding a backslash command, or a $$ delimiter.
  const walker = document.createTreeWalker(document.querySelector('article') || document.body,
                                           NodeFilter.SHOW_TEXT);
  const rawTex = [];
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    if (node.parentElement.closest('pre, code, script, style, math')) continue;
    const text = node.textContent;
    if (/\$\$/.test(text) || /\$[^$]*\\[a-zA-Z]+[^$]*\$/.test(text)) {
      rawTex.push(text.trim().slice(0, 80));
    }
  }
  return {title: document.title, images: document.images.length, broken, plots,
          maths: maths.length, unrendered, rawTex,
          apiObjects: document.querySelectorAll('.doc-object, .doc-heading').length};
})()
"""


class Problem(Exception):
    pass


def serve(site: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    handler = functools.partial(QuietHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # the check reports failed requests itself
        pass


class DevTools:
    """A minimal Chrome DevTools protocol client over one page's websocket."""

    def __init__(self, ws_url: str):
        self.ws = websocket.create_connection(ws_url, timeout=LOAD_TIMEOUT, suppress_origin=True)
        self.next_id = 0
        self.events: list[dict] = []

    def call(self, method: str, **params) -> dict:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        self.ws.settimeout(LOAD_TIMEOUT)  # drain() leaves a short one
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise Problem(f"DevTools {method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    def wait_for(self, event: str, timeout: float = LOAD_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        seen = len(self.events)
        while time.monotonic() < deadline:
            if any(e.get("method") == event for e in self.events[seen:]):
                return
            self.ws.settimeout(max(0.1, deadline - time.monotonic()))
            self.events.append(json.loads(self.ws.recv()))
        raise Problem(f"timed out after {timeout:.0f} s waiting for {event}")

    def drain(self, seconds: float) -> None:
        """Collect the events of the next `seconds` (late console errors, image loads)."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self.ws.settimeout(left)
            try:
                self.events.append(json.loads(self.ws.recv()))
            except WebSocketTimeoutException:  # nothing more arrived
                return

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True,
                           awaitPromise=True)
        if "exceptionDetails" in result:
            raise Problem(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def screenshot(self, path: Path) -> None:
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))


def launch(chromium: str, profile: str) -> subprocess.Popen:
    return subprocess.Popen([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                             "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def page_websocket(profile: Path, browser: subprocess.Popen) -> str:
    port_file = profile / "DevToolsActivePort"
    deadline = time.monotonic() + LOAD_TIMEOUT
    while not port_file.exists() or not port_file.read_text().strip():
        if browser.poll() is not None:
            raise Problem(f"chromium exited with status {browser.returncode} before it started")
        if time.monotonic() > deadline:
            raise Problem("chromium did not open its DevTools port")
        time.sleep(0.1)
    port = port_file.read_text().split()[0]
    while True:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as reply:
            pages = [t for t in json.load(reply) if t.get("type") == "page"]
        if pages:
            return pages[0]["webSocketDebuggerUrl"]
        if time.monotonic() > deadline:
            raise Problem("chromium opened no page")
        time.sleep(0.1)


def event_problems(events: list[dict], base: str) -> list[str]:
    problems = []
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            problems.append(f"JavaScript error: {text}")
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in params["args"])
            problems.append(f"console error: {text}")
        elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
            problems.append(f"browser error: {params['entry'].get('text')} "
                            f"{params['entry'].get('url', '')}".rstrip())
        elif method == "Network.requestWillBeSent":
            url = params["request"]["url"]
            if not url.startswith((base, "data:", "blob:", "about:")):
                problems.append(f"request leaves the site (must render offline): {url}")
        elif method == "Network.loadingFailed" and not params.get("canceled"):
            problems.append(f"request failed: {params.get('errorText')} ({params.get('type')})")
        elif method == "Network.responseReceived" and params["response"]["status"] >= 400:
            problems.append(f"HTTP {params['response']['status']}: {params['response']['url']}")
    return problems


def report_problems(kind: str, report: dict) -> list[str]:
    problems = [f"image did not load: {src}" for src in report["broken"]]
    if report["unrendered"]:
        problems.append(f"{report['unrendered']} of {report['maths']} formulas not rendered")
    problems += [f"raw LaTeX in the text: {text!r}" for text in report["rawTex"]]
    if kind == "tutorial" and report["plots"] == 0:
        problems.append("the tutorial shows no plot")
    if kind == "tutorial" and report["maths"] == 0:
        problems.append("the tutorial shows no typeset formula")
    if kind == "api" and report["apiObjects"] < 10:
        problems.append(f"the API page documents only {report['apiObjects']} objects")
    return problems


def check_page(tools: DevTools, base: str, path: str, kind: str, out: Path) -> list[str]:
    tools.events.clear()
    tools.call("Page.navigate", url=base + path)
    tools.wait_for("Page.loadEventFired")
    tools.drain(1.0)
    report = tools.evaluate(PAGE_REPORT_JS)
    problems = event_problems(tools.events, base) + report_problems(kind, report)
    tools.screenshot(out / f"{kind}.png")
    if kind == "tutorial":  # the first plot and the first formula, as a reader scrolls to them
        for target, selector in (("plot", ".jp-OutputArea-output img"),
                                 ("math", "article math[display=block]")):
            tools.evaluate(f"document.querySelector('{selector}')"
                           "?.scrollIntoView({block: 'center'})")
            tools.drain(0.3)
            tools.screenshot(out / f"{kind}-{target}.png")
    print(f"{kind:9s} /{path}: {report['images']} images ({report['plots']} plots), "
          f"{report['maths']} formulas, {len(problems)} problems")
    return [f"/{path}: {problem}" for problem in problems]


def check_site(site: Path, out: Path, chromium: str) -> list[str]:
    server, base = serve(site)
    profile = Path(tempfile.mkdtemp(prefix="tinypact-chromium-"))
    browser = launch(chromium, str(profile))
    try:
        tools = DevTools(page_websocket(profile, browser))
        for domain in ("Page", "Runtime", "Log", "Network"):
            tools.call(f"{domain}.enable")
        tools.call("Emulation.setDeviceMetricsOverride", width=1280, height=900,
                   deviceScaleFactor=1, mobile=False)
        problems = []
        for path, kind in PAGES:
            problems += check_page(tools, base, path, kind, out)
        return problems
    finally:
        browser.terminate()
        try:
            browser.wait(timeout=10)
        except subprocess.TimeoutExpired:
            browser.kill()
        server.shutdown()
        shutil.rmtree(profile, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--site", type=Path, default=ROOT / "site",
                        help="the built site (default: site/, what `mkdocs build` writes)")
    parser.add_argument("--out", type=Path, default=ROOT / "site-check",
                        help="folder for the screenshots (default: site-check/)")
    parser.add_argument("--chromium", default=os.environ.get("CHROMIUM", "/usr/bin/chromium"),
                        help="the browser (default: $CHROMIUM or Debian's /usr/bin/chromium)")
    args = parser.parse_args(argv)
    if not (args.site / "index.html").is_file():
        print(f"error: no built site at {args.site}: run `mkdocs build --strict` first",
              file=sys.stderr)
        return 2
    if websocket is None:
        print("error: scripts/check_docs.py needs websocket-client: pip install -e '.[docs]'",
              file=sys.stderr)
        return 2
    if not shutil.which(args.chromium):
        print(f"error: no browser at {args.chromium}: `apt-get install chromium`, or pass "
              "--chromium PATH", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        problems = check_site(args.site, args.out, args.chromium)
    except (Problem, OSError, WebSocketException) as error:  # the browser failed or timed out
        print(f"error: {error}", file=sys.stderr)
        return 1
    for problem in problems:
        print(f"FAIL {problem}")
    print(f"screenshots in {args.out}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
