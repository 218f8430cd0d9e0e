"""`moai-edge serve` under a robot's network (issue 25): each class of what went wrong, over real sockets on
127.0.0.1, on the tiny MoAI package."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the server needs moai-edge[serve]")
httpx = pytest.importorskip("httpx")

from moai_edge.bench.speed.serve_load import chat_body, png_url  # noqa: E402
from moai_edge.engines.options import RuntimeOptions  # noqa: E402
from moai_edge.runtime import DecodingConfig, Pipeline, Request, sample_image  # noqa: E402
from tests.reliability.corpus import decompression_bomb  # noqa: E402
from tests.runtime.test_serve import QUESTION, metric, png, post_in_thread, serving, wait_for  # noqa: E402


@pytest.fixture(scope="module")
def pipe(tiny_packages):
    with Pipeline.load(tiny_packages["moai"], RuntimeOptions(threads=1)) as p:
        yield p


def raw_request(url: str, head: bytes, body: bytes = b"") -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    sock.sendall(head + body)
    return sock


def read_all(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


# ---- shutdown --------------------------------------------------------------------------------------------------------
def test_sigterm_cuts_a_stream_with_an_error_and_never_waits_on_a_half_sent_body(tiny_packages):
    """A client that sent headers and part of a body, and a stream in flight: SIGTERM ends the stream with an error
    event the OpenAI client raises, and the process exits within the shutdown timeout (it used to wait forever)."""
    openai = pytest.importorskip("openai")
    proc = subprocess.Popen([sys.executable, "-m", "moai_edge.runtime.cli", "serve", "--engine",
                             str(tiny_packages["moai"]), "--port", "0", "--threads", "1", "--shutdown-timeout", "2"],
                            stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    drain = threading.Thread(target=lambda: lines.extend(proc.stderr))
    drain.start()
    try:
        wait_for(lambda: any("running on" in line for line in lines), timeout=120)
        url = next(line for line in lines if "running on" in line).split("running on ")[1].split()[0]
        wait_for(lambda: httpx.get(f"{url}/health/ready").status_code == 200, timeout=120)
        half = raw_request(url, b"POST /v1/ask HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\n\r\n",
                           b"x" * 10)
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        messages = [{"role": "user", "content": [{"type": "text", "text": QUESTION},
                                                 {"type": "image_url", "image_url": {"url": png_url(sample_image())}}]}]
        stream = client.chat.completions.create(model=os.path.basename(tiny_packages["moai"]), messages=messages,
                                                max_tokens=300, stream=True)
        chunks = iter(stream)
        next(chunks)  # the role chunk: the request is in the queue
        stopped = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        with pytest.raises(openai.APIError, match="shutting down"):
            for _ in chunks:
                pass
        code = proc.wait(timeout=30)
        elapsed = time.monotonic() - stopped
        half.close()
    finally:
        if proc.poll() is None:
            proc.kill()
        drain.join()
    assert code == 143 and elapsed < 15, (code, elapsed)


# ---- images from paths -----------------------------------------------------------------------------------------------
def test_special_and_oversized_files_in_an_allowed_folder_are_refused_unread(pipe, tmp_path):
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    os.mkfifo(allowed / "pipe.png")
    with open(allowed / "huge.png", "wb") as f:
        f.truncate(300 * 1024)  # over the body limit: never read
    with serving(pipe, allow_paths=(allowed,), max_body_bytes=256 * 1024) as server:
        url = f"{server.url}/v1/chat/completions"
        fifo = httpx.post(url, json=chat_body(str(allowed / "pipe.png"), QUESTION, 2), timeout=20)
        huge = httpx.post(url, json=chat_body(str(allowed / "huge.png"), QUESTION, 2), timeout=20)
        ready = httpx.get(f"{server.url}/health/ready", timeout=5)
    assert fifo.status_code == 400 and "not a regular file" in fifo.json()["error"]["message"], fifo.text
    assert huge.status_code == 413 and "307200 bytes" in huge.json()["error"]["message"], huge.text
    assert ready.status_code == 200


def test_health_ready_says_stuck_while_one_answer_runs_too_long(pipe):
    with serving(pipe, stuck_after_s=0.5) as server:
        out: list = []
        with pipe.lock:  # the pipeline cannot move
            t = post_in_thread(f"{server.url}/v1/chat/completions", chat_body(png_url(sample_image(64)), QUESTION, 2),
                               out)
            wait_for(lambda: server.app.state.server.worker.busy_since is not None)
            time.sleep(0.7)
            stuck = httpx.get(f"{server.url}/health/ready")
        t.join()
        after = httpx.get(f"{server.url}/health/ready")
    assert stuck.status_code == 503 and stuck.json()["status"] == "stuck", stuck.text
    assert after.status_code == 200 and out[0].status_code == 200


# ---- admission before work -------------------------------------------------------------------------------------------
def test_a_full_queue_refuses_before_any_image_is_decoded_and_waiting_requests_hold_small_images(pipe, monkeypatch):
    from moai_edge.runtime.serve import state

    decoded = []
    real = state.decode_image
    monkeypatch.setattr(state, "decode_image", lambda *a, **k: decoded.append(1) or real(*a, **k))
    big = np.random.default_rng(0).integers(0, 256, (800, 1000, 3), dtype=np.uint8)
    with serving(pipe, max_queue=1) as server:
        worker = server.app.state.server.worker
        url, body = f"{server.url}/v1/chat/completions", chat_body(png_url(big), QUESTION, 2)
        outs: list = [[], []]
        with pipe.lock:
            threads = [post_in_thread(url, body, outs[0])]
            wait_for(lambda: worker.running == 1)
            threads.append(post_in_thread(url, body, outs[1]))
            wait_for(lambda: len(worker.pending) == 1)
            waiting_image = worker.pending[0].request.image
            refused = httpx.post(url, json=body, timeout=30)
        for t in threads:
            t.join()
    size = pipe.manifest.preprocess.image_size
    assert refused.status_code == 429 and len(decoded) == 2  # the third request was refused undecoded
    assert waiting_image.shape == (size, size, 3)  # not 800 x 1000
    assert outs[0][0].status_code == outs[1][0].status_code == 200
    assert outs[0][0].json()["choices"][0]["message"]["content"] == pipe.ask(
        big, QUESTION, decoding="greedy", max_new_tokens=2).answer


# ---- client input ----------------------------------------------------------------------------------------------------
IMAGE = {"type": "image_url", "image_url": {"url": png_url(sample_image(64))}}
BAD_INPUT = {
    "deeply nested JSON": ("[" * 100_000 + "]" * 100_000, "nests deeper"),
    "stream_options not an object": (json.dumps({**chat_body(png_url(sample_image(64)), QUESTION, 2), "stream": True,
                                                 "stream_options": "yes"}), "stream_options: expected an object"),
    "a lone surrogate in the question": ('{"messages": [{"role": "user", "content": [{"type": "text", "text": '
                                         '"what \\ud800 is it?"}, ' + json.dumps(IMAGE) + ']}]}', "lone surrogate"),
    "a NUL byte in a file path": (json.dumps(chat_body("/tmp/a\0.png", QUESTION, 2)), "NUL"),
    "a NUL byte in a file URL": (json.dumps(chat_body("file:///tmp/a%00.png", QUESTION, 2)), "NUL"),
    "an unknown model": (json.dumps(chat_body(png_url(sample_image(64)), QUESTION, 2, model="gpt-4o")),
                         "this server serves"),
}
STATUS = {"an unknown model": 404}


@pytest.fixture(scope="module")
def server(pipe, tmp_path_factory):
    with serving(pipe, allow_paths=(tmp_path_factory.mktemp("allowed"),)) as s:
        yield s


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_client_input_that_gave_a_500_is_a_4xx_naming_the_field(server, case):
    body, words = BAD_INPUT[case]
    r = httpx.post(f"{server.url}/v1/chat/completions", content=body.encode("utf-8", "surrogatepass"),
                   headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == STATUS.get(case, 400) and words in r.json()["error"]["message"], r.text


def test_a_decompression_bomb_is_413_as_documented(server):
    r = httpx.post(f"{server.url}/v1/ask", content=decompression_bomb(), timeout=30)
    assert r.status_code == 413 and "decompression bomb" in r.json()["error"]["message"], r.text


def test_a_client_that_hangs_up_mid_upload_is_counted_as_gone_not_as_a_server_error(server, caplog):
    gone, errors = (metric(server.url, f'moai_edge_requests_total{{endpoint="/v1/ask",status="{s}"}}')
                    for s in (499, 500))
    with caplog.at_level(logging.ERROR, logger="moai_edge.serve"):
        raw_request(server.url, b"POST /v1/ask HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\n\r\n",
                    b"x" * 1000).close()
        wait_for(lambda: metric(server.url, 'moai_edge_requests_total{endpoint="/v1/ask",status="499"}') == gone + 1)
    assert metric(server.url, 'moai_edge_requests_total{endpoint="/v1/ask",status="500"}') == errors
    assert not [r for r in caplog.records if r.name.startswith("moai_edge.serve")]


# ---- cancellation ----------------------------------------------------------------------------------------------------
def test_beam_search_stops_between_steps_once_nobody_wants_the_answer(pipe):
    asked = []

    def should_stop(row: int) -> bool:
        asked.append(row)
        return len(asked) >= 3

    beam = DecodingConfig(strategy="beam", num_beams=3, max_new_tokens=60, eos_token_ids=(10**6,))  # no eos: 60 steps
    pipe.run([Request(sample_image(64), QUESTION, beam)], should_stop=should_stop)
    assert len(asked) == 3  # asked once per step, and the search stopped at the third


def test_the_worker_stops_a_cancelled_jobs_decoding_whatever_its_strategy(pipe):
    from moai_edge.runtime.serve.worker import Job, Worker

    seen = {}

    class Recording:
        def run(self, requests, *, on_token=None, should_stop=None):
            seen["before"] = should_stop(0)
            job.cancelled.set()
            seen["after"] = should_stop(0)
            return [None]

    worker = Worker(Recording(), max_queue=1)
    job = Job(Request(sample_image(64), QUESTION), done=lambda *a: seen.setdefault("done", True))
    worker.submit(job, worker.admit())
    wait_for(lambda: "done" in seen)
    worker.close()
    assert seen["before"] is False and seen["after"] is True


# ---- conventions and hardening ---------------------------------------------------------------------------------------
def test_without_a_key_foreign_hosts_and_cross_site_origins_are_refused(pipe):
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    with serving(pipe, allow_origins=("http://localhost:3000",)) as server:
        own = server.url.removeprefix("http://")
        rebinding = httpx.get(f"{server.url}/v1/models", headers={"Host": "evil.example"})
        cross = httpx.post(f"{server.url}/v1/ask", content=png(sample_image(64)), headers={"Origin": "http://evil.example"})
        same = httpx.get(f"{server.url}/v1/models", headers={"Origin": f"http://{own}"})
        allowed = httpx.get(f"{server.url}/v1/models", headers={"Origin": "http://localhost:3000"})
        with pytest.raises(InvalidStatus):
            connect(server.url.replace("http", "ws") + "/v1/camera", origin="http://evil.example").close()
    with serving(pipe, api_key="sesame") as keyed:
        with_key = httpx.get(f"{keyed.url}/v1/models", headers={"Host": "robot.example",
                                                                "Authorization": "Bearer sesame"})
    assert rebinding.status_code == 403 and "does not name this server" in rebinding.json()["error"]["message"]
    assert cross.status_code == 403 and "cross-origin" in cross.json()["error"]["message"]
    assert same.status_code == 200 and allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "http://localhost:3000"
    assert with_key.status_code == 200


def test_a_key_in_a_url_never_reaches_the_access_log(pipe):
    from moai_edge.runtime.serve.listener import uvicorn_server

    from moai_edge.runtime.serve import ServeConfig, create_app

    uvicorn_server(create_app(lambda: pipe, ServeConfig(port=0), owns_pipeline=False), ServeConfig(port=0))
    access = logging.getLogger("uvicorn.access")
    record = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 0, '%s - "%s %s HTTP/%s" %d',
                               ("127.0.0.1:5000", "GET", "/v1/camera?api_key=sesame&question=hi", "1.1", 401), None)
    assert all(f.filter(record) for f in access.filters)
    assert "sesame" not in record.getMessage() and "question=hi" in record.getMessage()


def test_a_head_or_a_body_that_does_not_arrive_in_time_gets_408(pipe):
    with serving(pipe, read_timeout_s=1) as server:
        started = time.monotonic()
        head = read_all(raw_request(server.url, b"POST /v1/ask HTTP/1.1\r\nHost: 127.0.0.1\r\n"))
        head_s = time.monotonic() - started
        body = read_all(raw_request(server.url, b"POST /v1/ask HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n"
                                                b"Connection: close\r\n\r\n", b"x" * 10))
    assert head.startswith(b"HTTP/1.1 408") and head_s < 10
    assert body.startswith(b"HTTP/1.1 408") and b"did not arrive within 1 s" in body
