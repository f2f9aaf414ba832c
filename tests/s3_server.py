"""An S3-compatible server on 127.0.0.1 for the tests: moto, one request at a time.

Real S3 evaluates a conditional PUT (``If-None-Match: *``, ``If-Match``) and stores the object
atomically. moto checks the condition and stores the object in two steps, and its server runs
requests on concurrent threads, so two conditional PUTs racing could both succeed there. Serving
one request at a time gives moto the atomicity S3 has; every other behaviour is moto's own.

Run: ``python -m tests.s3_server PORT``.
"""

from __future__ import annotations

import sys
import threading

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import make_server


def serialized(app):
    """A WSGI app that runs ``app`` for one request at a time (the response body included)."""
    lock = threading.Lock()

    def call(environ, start_response):
        with lock:
            body = app(environ, start_response)
            try:
                return [b"".join(body)]
            finally:
                close = getattr(body, "close", None)
                if close is not None:
                    close()

    return call


def main() -> None:
    port = int(sys.argv[1])
    app = serialized(DomainDispatcherApplication(create_backend_app))
    make_server("127.0.0.1", port, app, threaded=True, request_handler=MotoRequestHandler).serve_forever()


if __name__ == "__main__":
    main()
