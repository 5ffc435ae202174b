"""Traces: OTLP export reaches a real OTLP/HTTP endpoint (a local HTTP server stands in for the
collector) when one is configured, nothing is exported otherwise, and one trace runs from a
produced audio chunk through the worker to the transcript record (Kafka record headers)."""

from __future__ import annotations

import asyncio
import http.server
import subprocess
import sys
import textwrap
import threading

import faust
import pytest
from audiogen import espeak_wav, have_tools
from kafka_broker import make_kafka_fixture
from pipeline_helpers import has_summaries, pipeline_settings, read_results

from callscribe.pipeline.codec import AudioOptions, TranscriptEvent


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


# --- one trace from the produced chunk to the transcript record ------------------------------
# A real broker and the real model; the worker is the real faust app, run in this process (not
# a subprocess) so that its spans reach the same in-memory exporter as the producer's.
trace_broker = make_kafka_fixture(scope="module")


class _InProcessWorker(faust.Worker):
    def install_signal_handlers(self) -> None:  # pytest owns the signals of this process
        pass


@pytest.fixture(scope="module")
def span_exporter():
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    # set_tracer_provider works once per process: check this one is the one in force
    assert trace.get_tracer_provider() is provider, "another tracer provider was set first"
    yield exporter
    exporter.clear()
    provider.shutdown()  # later tests in this process export nothing


def test_one_trace_from_produced_chunk_to_transcript_record(trace_broker, span_exporter,
                                                            runtime, tmp_path):
    from callscribe.pipeline.producer import produce_file
    from callscribe.pipeline.topics import ensure_topics
    from callscribe.pipeline.worker import PipelineWorker
    from callscribe.tracing import context_from_headers

    if not have_tools("espeak-ng"):
        pytest.fail("espeak-ng is required (scripts/test.sh installs it)")
    wav = espeak_wav("Thank you for calling. How can I help you today?", tmp_path / "call.wav")
    settings = pipeline_settings(trace_broker.bootstrap, partitions=1)
    call_id = "trace-call-1"
    span_exporter.clear()

    async def scenario() -> list:
        await ensure_topics(trace_broker.bootstrap, settings)
        worker = PipelineWorker(settings, runtime, partitions=1)
        await worker.producer.start()
        fw = _InProcessWorker(worker.app, loop=asyncio.get_running_loop(), quiet=True,
                              redirect_stdouts=False, override_logging=False)
        fw.spinner = None
        assigned = asyncio.Event()

        async def on_assigned(app, assigned_tps, **_):
            if assigned_tps:
                assigned.set()
        worker.app.on_partitions_assigned.connect(on_assigned)
        running = asyncio.create_task(fw.start())  # returns when the worker stops
        try:
            await asyncio.wait_for(assigned.wait(), 60)
            await produce_file(wav, call_id, ["agent"], settings=settings,
                               options=AudioOptions(language_hints=("en",)))
            return await read_results(trace_broker.bootstrap,
                                      [settings.kafka_topic_transcripts],
                                      has_summaries(call_id), 120, headers=True)
        finally:
            await fw.stop()
            await asyncio.wait_for(running, 60)
            await worker.producer.stop()

    loop = asyncio.new_event_loop()
    try:
        records = loop.run_until_complete(asyncio.wait_for(scenario(), 180))
    finally:
        loop.close()

    finals = [(r, h) for _, r, h in records if isinstance(r, TranscriptEvent) and r.final
              and r.text]
    assert finals, f"no final transcript for {call_id}: {records}"
    spans = span_exporter.get_finished_spans()
    produced = [s for s in spans if s.name == "produce call"]
    assert len(produced) == 1, [s.name for s in spans]
    trace_id = produced[0].context.trace_id
    by_id = {s.context.span_id: s for s in spans}

    def chain(span) -> list[str]:  # names from the span up to its root
        names = []
        while span is not None:
            names.append(span.name)
            span = by_id.get(span.parent.span_id) if span.parent else None
        return names

    for rec, headers in finals:
        ctx = context_from_headers(headers)
        assert ctx is not None, f"transcript record without trace headers: {headers}"
        from opentelemetry import trace as api
        sc = api.get_current_span(ctx).get_span_context()
        assert sc.trace_id == trace_id, "the transcript record is in another trace"
        publish = by_id[sc.span_id]  # the record names the worker's publish span ...
        assert publish.name == "transcript.publish"
        assert publish.attributes["sentence_id"] == rec.sentence_id
        assert chain(publish) == ["transcript.publish", "produce call"]  # ... under the chunk's
    decodes = [s for s in spans if s.name == "decode.final"]
    assert decodes and all(s.context.trace_id == trace_id for s in decodes)
    assert all(chain(s) == ["decode.final", "produce call"] for s in decodes)
    assert {s.context.trace_id for s in spans if s.name.startswith(("decode.", "transcript."))
            } == {trace_id}


def test_stream_decodes_are_children_of_the_task_span(span_exporter, runtime, tmp_path):
    """The gateway runs decodes in worker threads; their spans still find the task's span."""
    from opentelemetry import trace

    from callscribe.audio import decode_bytes
    from callscribe.recognition.runtime import StreamOptions

    if not have_tools("espeak-ng"):
        pytest.fail("espeak-ng is required (scripts/test.sh installs it)")
    wav = espeak_wav("Please hold while I check your account.", tmp_path / "task.wav")
    pcm = decode_bytes(wav.read_bytes(), "wav")[0]
    data = (pcm * 32767).astype("<i2").tobytes()
    span_exporter.clear()

    async def scenario() -> list:
        task = trace.get_tracer("test").start_span("run-task")
        stream = runtime.open_stream(StreamOptions(format="pcm", sample_rate=16000,
                                                   language_hints=("en",)))
        stream.trace_context = trace.set_span_in_context(task)
        for i in range(0, len(data), 3200):
            await stream.put(data[i:i + 3200])
        await stream.finish()
        events = [ev async for ev in stream.events()]
        await stream.aclose()
        task.end()
        return events

    loop = asyncio.new_event_loop()
    try:
        events = loop.run_until_complete(asyncio.wait_for(scenario(), 120))
    finally:
        loop.close()
    assert any(type(e).__name__ == "FinalSentence" and e.text for e in events), events
    spans = span_exporter.get_finished_spans()
    task = next(s for s in spans if s.name == "run-task")
    decodes = [s for s in spans if s.name.startswith("decode.")]
    assert any(s.name == "decode.final" for s in decodes), [s.name for s in spans]
    assert all(s.parent is not None and s.parent.span_id == task.context.span_id
               for s in decodes)
