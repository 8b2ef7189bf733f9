"""A webhook receiver for agentworker, in a few lines: it verifies each request with the
``standardwebhooks`` package (the signature, and a timestamp within five minutes) and drops
a repeat by its ``webhook-id``. Run it, then name it in ``agentworker.toml``::

    HELPDESK_WEBHOOK_SECRET=whsec_... python examples/webhook_receiver.py 9000

    [[webhooks]]
    name = "helpdesk"
    url = "http://127.0.0.1:9000/"
    secret_env = "HELPDESK_WEBHOOK_SECRET"
"""

from __future__ import annotations

import json
import os
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

WEBHOOK = Webhook(os.environ["HELPDESK_WEBHOOK_SECRET"])
SEEN: set[str] = set()


class Receiver(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        try:
            event = WEBHOOK.verify(body, dict(self.headers))
        except WebhookVerificationError:
            self.send_response(400)  # not agentworker's, or replayed too late
            self.end_headers()
            return
        if self.headers["webhook-id"] not in SEEN:  # a repeat of one already taken: skip
            SEEN.add(self.headers["webhook-id"])
            data = event["data"]
            print(json.dumps({"type": event["type"], "conversation": data["conversation_id"]}))
            sys.stdout.flush()
        self.send_response(204)
        self.end_headers()


if __name__ == "__main__":
    HTTPServer(
        ("127.0.0.1", int(sys.argv[1]) if len(sys.argv) > 1 else 9000), Receiver
    ).serve_forever()
