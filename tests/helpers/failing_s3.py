"""An S3 endpoint that answers every request with one error, as a store does while it fails (SeaweedFS answers
`InternalError` while it stops): for fault tests of how an error answer, rather than a refused connection, is
handled once botocore's retries are spent."""

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from app.cli.embedded.process import free_ports

_MESSAGES = {"InternalError": "We encountered an internal error, please try again.", "NoSuchKey": "No such key."}


class FailingS3:
    """Serves 127.0.0.1:`port`, answering each request with HTTP `status` and an S3 error body of `code`
    (HEAD answers carry no body, as S3's do); `requests` counts what it was asked."""

    def __init__(self, status: int = 500, code: str = "InternalError") -> None:
        self.port = free_ports(1)[0]
        self.url = f"http://127.0.0.1:{self.port}"
        self.requests = 0
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{code}</Code><Message>{_MESSAGES.get(code, code)}</Message></Error>"
        ).encode()
        failing = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self, with_body: bool) -> None:
                failing.requests += 1
                self.rfile.read(int(self.headers.get("Content-Length") or 0))  # what a PUT sent
                self.send_response(status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if with_body:
                    self.wfile.write(body)

            def do_GET(self) -> None:
                self._answer(with_body=True)

            do_PUT = do_POST = do_DELETE = do_GET

            def do_HEAD(self) -> None:
                self._answer(with_body=False)

            def log_message(self, *_: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="failing-s3", daemon=True)

    def __enter__(self) -> "FailingS3":
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)
