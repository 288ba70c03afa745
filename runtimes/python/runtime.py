#!/usr/bin/env python3
"""An OpenWhisk action runtime for Python 3 code actions, standard library only.

Written from the action runtime protocol (apache/openwhisk docs/actions-new.md):

- POST /init  {"value": {"name", "main", "code", "binary", "env"}}: loads the action once.
  `code` is Python source, or with `binary: true` a base64 zip whose `__main__.py` (else
  `main.py`) is the module; `main` names the entry function (default "main"); `env` is
  added to the environment. Answers {"ok": true}; a failure answers 502 {"error": ...}; a
  second /init answers 403.
- POST /run   {"value": params, "activation_id", "action_name", "deadline", "api_key",
  "namespace", "transaction_id"}: sets __OW_ACTIVATION_ID, __OW_ACTION_NAME, __OW_DEADLINE,
  __OW_API_KEY, __OW_NAMESPACE and __OW_TRANSACTION_ID, calls main(params) and answers its
  dictionary; a non-dictionary answers 502 {"error": "The action did not return a
  dictionary."}, an exception 502 {"error": "An error has occurred (see logs for details):
  ..."}. After each activation the line XXX_THE_END_OF_A_WHISK_ACTIVATION_XXX is written to
  stdout and to stderr.

Listens on the address in the environment variable `bind` (the watchdog sets its loopback
address), default 0.0.0.0, at the port in the environment
variable `port` (what the faas-rs watchdog sets), else 8080 as OpenWhisk's runtimes do.
"""

import base64
import io
import json
import os
import sys
import tempfile
import threading
import traceback
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MARKER = "XXX_THE_END_OF_A_WHISK_ACTIVATION_XXX"

_lock = threading.Lock()
_action = {"main": None}


def _load(value):
    code = value.get("code") or ""
    main = value.get("main") or "main"
    env = value.get("env") or {}
    for k, v in env.items():
        os.environ[str(k)] = v if isinstance(v, str) else json.dumps(v)
    if value.get("binary"):
        data = base64.b64decode(code)
        workdir = tempfile.mkdtemp(prefix="ow-action-")
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            z.extractall(workdir)
        entry = None
        for name in ("__main__.py", "main.py"):
            if os.path.exists(os.path.join(workdir, name)):
                entry = os.path.join(workdir, name)
                break
        if entry is None:
            raise ValueError("Zip file does not include __main__.py")
        sys.path.insert(0, workdir)
        with open(entry) as f:
            source = f.read()
        filename = entry
    else:
        source = code
        filename = "__main__.py"
    scope = {"__name__": "__ow_action__", "__file__": filename}
    exec(compile(source, filename, "exec"), scope)
    fn = scope.get(main)
    if not callable(fn):
        raise NameError("Action entrypoint '%s' is not a function" % main)
    return fn


def _markers():
    sys.stdout.write(MARKER + "\n")
    sys.stderr.write(MARKER + "\n")
    sys.stdout.flush()
    sys.stderr.flush()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        # The access log is not the action's output.
        pass

    def _answer(self, status, obj):
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _body(self):
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b"{}"
        return json.loads(raw or b"{}")

    def do_POST(self):
        try:
            msg = self._body()
        except Exception as e:  # noqa: BLE001 - any bad body is the caller's error
            self._answer(400, {"error": "Invalid JSON: %s" % e})
            return
        if self.path == "/init":
            self._init(msg)
        elif self.path == "/run":
            self._run(msg)
        else:
            self._answer(404, {"error": "Not found: %s" % self.path})

    def _init(self, msg):
        with _lock:
            if _action["main"] is not None:
                self._answer(403, {"error": "Cannot initialize the action more than once."})
                return
            try:
                _action["main"] = _load((msg or {}).get("value") or {})
            except Exception as e:  # noqa: BLE001 - reported as the init failure
                traceback.print_exc()
                sys.stdout.flush()
                sys.stderr.flush()
                self._answer(502, {"error": "Initialization has failed due to: %s" % e})
                return
        self._answer(200, {"ok": True})

    def _run(self, msg):
        fn = _action["main"]
        if fn is None:
            self._answer(502, {"error": "Cannot invoke an uninitialized action."})
            return
        for k, v in msg.items():
            if k != "value":
                os.environ["__OW_" + k.upper()] = v if isinstance(v, str) else json.dumps(v)
        params = msg.get("value") or {}
        try:
            result = fn(params)
        except Exception as e:  # noqa: BLE001 - reported as the activation's error
            traceback.print_exc()
            _markers()
            self._answer(502, {"error": "An error has occurred (see logs for details): %s" % e})
            return
        _markers()
        if not isinstance(result, dict):
            self._answer(502, {"error": "The action did not return a dictionary."})
            return
        self._answer(200, result)


def main():
    port = int(os.environ.get("port") or 8080)
    bind = os.environ.get("bind") or "0.0.0.0"
    server = ThreadingHTTPServer((bind, port), Handler)
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
