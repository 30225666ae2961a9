#!/usr/bin/env python3
"""A webhook receiver for tests: verifies every delivery's signature with the
`standardwebhooks` package (PyPI), not tally's code, and logs what it got.

    webhook-receiver.py PORT SECRETS_JSON

SECRETS_JSON maps a path (`/acme`) to its endpoint's `whsec_...` secret. Prints `ready` once
listening. Answers 503 while failing (the start, or after `POST /_mode` with body `fail`),
2xx once `POST /_mode` says `ok`, and 400 to a delivery whose signature does not verify.
`GET /_log` returns every delivery as JSON: path, webhook-id, type, answer, verified, body.
A delivery whose webhook-id was already answered 2xx on that path is answered 200 again and
logged as a duplicate (as the specification asks receivers to do).
"""
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks import Webhook, WebhookVerificationError

PORT = int(sys.argv[1])
SECRETS = json.loads(sys.argv[2])
LOCK = threading.Lock()
STATE = {"mode": "fail", "log": [], "taken": set()}


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def answer(self, code, body=b""):
        self.send_response(code)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path != "/_log":
            return self.answer(404)
        with LOCK:
            body = json.dumps(STATE["log"]).encode()
        self.answer(200, body)

    def do_POST(self):
        length = int(self.headers.get("content-length", "0"))
        body = self.rfile.read(length)
        if self.path == "/_mode":
            with LOCK:
                STATE["mode"] = body.decode().strip()
            return self.answer(204)
        secret = SECRETS.get(self.path)
        entry = {
            "path": self.path,
            "id": self.headers.get("webhook-id"),
            "timestamp": self.headers.get("webhook-timestamp"),
            "body": body.decode("utf-8", "replace"),
        }
        try:
            if secret is None:
                raise WebhookVerificationError("no secret for this path")
            payload = Webhook(secret).verify(body, dict(self.headers))
            entry["verified"] = True
            entry["type"] = payload.get("type")
        except Exception as e:  # any failure to verify is recorded and refused
            entry["verified"] = False
            entry["error"] = str(e)
        with LOCK:
            if not entry["verified"]:
                code = 400
            elif STATE["mode"] != "ok":
                code = 503
            else:
                key = (entry["path"], entry["id"])
                entry["duplicate"] = key in STATE["taken"]
                STATE["taken"].add(key)
                code = 200
            entry["answer"] = code
            STATE["log"].append(entry)
        self.answer(code)


server = ThreadingHTTPServer(("127.0.0.1", PORT), Handler)
print("ready", flush=True)
server.serve_forever()
