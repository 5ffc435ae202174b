"""OTLP trace export: spans reach a real OTLP/HTTP endpoint (a local HTTP server stands in for
the collector) when one is configured, and nothing is exported otherwise."""

from __future__ import annotations

import http.server
import subprocess
import sys
import textwrap
import threading


def test_otlp_export_reaches_the_collector(tmp_path):
    received: list[tuple[str, bytes]] = []

    class Collector(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((self.path, body))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *a):
            pass

    httpd = http.server.HTTPServer(("127.0.0.1", 0), Collector)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        script = textwrap.dedent(f"""
            from opentelemetry import trace
            from callscribe.telemetry import configure_tracing
            assert configure_tracing("callscribe-test", "http://127.0.0.1:{httpd.server_port}")
            with trace.get_tracer("t").start_as_current_span("task"):
                with trace.get_tracer("t").start_as_current_span("decode.final"):
                    pass
            trace.get_tracer_provider().shutdown()
        """)
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                             timeout=60)
        assert out.returncode == 0, out.stderr
    finally:
        httpd.shutdown()
    assert received and received[0][0] == "/v1/traces"
    body = b"".join(b for _, b in received)
    assert b"decode.final" in body and b"callscribe-test" in body


def test_no_endpoint_no_exporter():
    from callscribe.telemetry import configure_tracing

    assert configure_tracing("x", "") is False
