"""`moai-edge serve` driven over real HTTP on 127.0.0.1 (httpx, the OpenAI client, a WebSocket client), on the tiny
MoAI package; answers are held to the Python API's."""

from __future__ import annotations

import io
import json
import threading
import time
from contextlib import contextmanager

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the server needs moai-edge[serve]")
httpx = pytest.importorskip("httpx")

from PIL import Image  # noqa: E402

from moai_edge.bench.speed.serve_load import chat_body, png_url, run_load  # noqa: E402
from moai_edge.engines.options import RuntimeOptions  # noqa: E402
from moai_edge.runtime.pipeline import Pipeline  # noqa: E402
from moai_edge.runtime.samples import sample_image  # noqa: E402
from moai_edge.runtime.serve.app import create_app  # noqa: E402
from moai_edge.runtime.serve.background import BackgroundServer  # noqa: E402
from moai_edge.runtime.serve.config import ServeConfig  # noqa: E402

QUESTION = "What is in the image?"
TOKENS = 8


@pytest.fixture(scope="module")
def pipe(tiny_packages):
    with Pipeline.load(tiny_packages["moai"], RuntimeOptions(threads=1, image_cache_mb=64)) as p:
        yield p


@contextmanager
def serving(pipe, **config):
    app = create_app(lambda: pipe, ServeConfig(port=0, warmup=False, **config), model="tiny-moai", owns_pipeline=False)
    with BackgroundServer(app) as server:
        yield server


@pytest.fixture(scope="module")
def server(pipe):
    with serving(pipe) as s:
        yield s


def png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def expected(pipe, image, question=QUESTION, tokens=TOKENS):
    return pipe.ask(image, question, decoding="greedy", max_new_tokens=tokens)


def metric(base_url: str, name: str, headers=None) -> float:
    """The sum of every sample of `name` on /metrics."""
    text = httpx.get(f"{base_url}/metrics", headers=headers).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and line[len(name)] in " {")


def test_chat_completion_is_the_python_api_answer_with_experts_and_timings(server, pipe):
    image = sample_image(seed=11)
    r = httpx.post(f"{server.url}/v1/chat/completions", json=chat_body(png_url(image), QUESTION, TOKENS), timeout=120)
    assert r.status_code == 200, r.text
    body, want = r.json(), expected(pipe, image)
    assert body["object"] == "chat.completion" and body["model"] == "tiny-moai"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": want.answer}
    assert body["choices"][0]["finish_reason"] == ("length" if len(want.tokens) == TOKENS else "stop")
    assert body["usage"] == {"prompt_tokens": want.prompt_tokens, "completion_tokens": len(want.tokens),
                             "total_tokens": want.prompt_tokens + len(want.tokens)}
    assert want.prompt_tokens > pipe.manifest.model.num_image_tokens
    assert body["experts"] == json.loads(json.dumps({**want.experts, "verbalized": want.verbalized}))
    assert body["experts"]["segments"] and body["experts"]["verbalized"]
    assert {"vision", "prefill", "decode", "total", "queue"} <= set(body["timings_ms"])


def test_streamed_chunks_add_up_to_the_answer_and_end_with_done(server, pipe):
    image = sample_image(seed=12)
    body = {**chat_body(png_url(image), QUESTION, TOKENS), "stream": True, "stream_options": {"include_usage": True}}
    events = []
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, timeout=120) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [line[len("data: "):] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    want = expected(pipe, image)
    assert text == want.answer
    assert len(chunks) >= 3  # the role, at least one piece, the last chunk
    last = chunks[-1]
    assert last["choices"][0]["finish_reason"] in ("stop", "length")
    assert last["experts"]["segments"] == json.loads(json.dumps(want.experts["segments"]))
    assert last["usage"]["completion_tokens"] == len(want.tokens)


def test_the_openai_client_as_the_readme_shows_it(server, pipe):
    openai = pytest.importorskip("openai")
    image = sample_image(seed=13)
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused")
    messages = [{"role": "user", "content": [{"type": "text", "text": QUESTION},
                                             {"type": "image_url", "image_url": {"url": png_url(image)}}]}]
    reply = client.chat.completions.create(model="tiny-moai", messages=messages, max_tokens=TOKENS, temperature=0)
    want = expected(pipe, image)
    assert reply.choices[0].message.content == want.answer
    assert reply.model_extra["experts"]["verbalized"] == want.verbalized
    stream = client.chat.completions.create(model="tiny-moai", messages=messages, max_tokens=TOKENS, temperature=0,
                                            stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream) == want.answer
    assert [m.id for m in client.models.list()] == ["tiny-moai"]


def test_native_ask_takes_the_image_as_bytes(server, pipe):
    image = sample_image(seed=14)
    r = httpx.post(f"{server.url}/v1/ask", params={"question": "Is there a car?", "max_new_tokens": 4},
                   content=png(image), timeout=120)
    assert r.status_code == 200, r.text
    want = expected(pipe, image, "Is there a car?", 4)
    assert r.json()["answer"] == want.answer and r.json()["tokens"] == want.tokens
    assert r.json()["experts"]["segments"] and "queue" in r.json()["timings_ms"]


def test_health_ready_and_metrics(server):
    assert httpx.get(f"{server.url}/health").json() == {"status": "ok"}
    ready = httpx.get(f"{server.url}/health/ready")
    assert ready.status_code == 200 and ready.json()["family"] == "moai"
    image = png_url(sample_image(seed=15))
    hits = metric(server.url, 'moai_edge_image_cache_lookups_total{outcome="hit"}')
    tokens = metric(server.url, "moai_edge_generated_tokens_total")
    for question in (QUESTION, "Is there a car?"):  # the second question about the image hits the cache
        assert httpx.post(f"{server.url}/v1/chat/completions", json=chat_body(image, question, 3),
                          timeout=120).status_code == 200
    assert metric(server.url, 'moai_edge_image_cache_lookups_total{outcome="hit"}') == hits + 1
    assert 2 <= metric(server.url, "moai_edge_generated_tokens_total") - tokens <= 6
    for stage in ("experts", "vision", "prefill", "decode"):
        assert metric(server.url, f'moai_edge_stage_seconds_count{{stage="{stage}"}}') >= 1
    assert metric(server.url, 'moai_edge_request_seconds_count{endpoint="/v1/chat/completions"}') >= 2
    assert metric(server.url, 'moai_edge_requests_total{endpoint="/v1/chat/completions",status="200"}') >= 2
    assert metric(server.url, "moai_edge_resident_memory_bytes") > 50 * 2**20
    assert metric(server.url, "moai_edge_queue_depth") == 0


def post_in_thread(url: str, body: dict, out: list, timeout: float = 120) -> threading.Thread:
    def send():
        try:
            out.append(httpx.post(url, json=body, timeout=timeout))
        except httpx.HTTPError as exc:
            out.append(exc)
    t = threading.Thread(target=send)
    t.start()
    return t


def wait_for(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_a_full_queue_answers_429_with_retry_after_and_loses_nothing(pipe):
    with serving(pipe, max_queue=1) as server:
        worker = server.app.state.server.worker
        url, body = f"{server.url}/v1/chat/completions", chat_body(png_url(sample_image(seed=16)), QUESTION, 3)
        first, second = [], []
        with pipe.lock:  # the model is busy: the first request is taken and waits for it, the second waits in the queue
            threads = [post_in_thread(url, body, first)]
            wait_for(lambda: worker.running == 1)
            threads.append(post_in_thread(url, body, second))
            wait_for(lambda: worker.depth() == 1)
            refused = httpx.post(url, json=body, timeout=30)
        for t in threads:
            t.join()
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
    error = refused.json()["error"]
    assert error["type"] == "rate_limit_error" and "queue is full" in error["message"]
    assert first[0].status_code == second[0].status_code == 200
    assert first[0].json()["choices"][0]["message"]["content"] == second[0].json()["choices"][0]["message"]["content"]


@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "plain"])
def test_a_client_that_disconnects_cancels_its_decode(pipe, stream, monkeypatch):
    from moai_edge.runtime.serve import state

    jobs = []

    class Recorded(state.Job):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            jobs.append(self)

    monkeypatch.setattr(state, "Job", Recorded)
    with serving(pipe) as server:
        url = f"{server.url}/v1/chat/completions"
        body = {**chat_body(png_url(sample_image(seed=17)), QUESTION, 200), "stream": stream}
        tokens = metric(server.url, "moai_edge_generated_tokens_total")
        with pipe.lock:  # the request cannot start before its client is gone
            if stream:
                with httpx.stream("POST", url, json=body, timeout=60) as r:
                    assert r.status_code == 200
                    next(r.iter_lines())  # the role chunk arrives before any token; then the client hangs up
            else:
                with pytest.raises(httpx.ReadTimeout):
                    httpx.post(url, json=body, timeout=1.0)
            wait_for(lambda: jobs and jobs[0].cancelled.is_set())  # the server noticed
        wait_for(lambda: metric(server.url, "moai_edge_requests_cancelled_total") == 1)
        assert metric(server.url, "moai_edge_generated_tokens_total") - tokens <= 1  # not the 200 asked for


@pytest.fixture(scope="module")
def strict(pipe, tmp_path_factory):
    allowed = tmp_path_factory.mktemp("allowed")
    Image.fromarray(sample_image(seed=18)).save(allowed / "frame.png")
    outside = tmp_path_factory.mktemp("outside")
    Image.fromarray(sample_image(seed=18)).save(outside / "frame.png")
    with serving(pipe, api_key="sesame", allow_paths=(allowed,), max_body_bytes=256 * 1024,
                 max_pixels=400 * 400) as server:
        yield server, allowed, outside


KEY = {"Authorization": "Bearer sesame"}


def message(content) -> dict:
    return {"messages": [{"role": "user", "content": content}], "max_tokens": 2, "temperature": 0}


def image_part(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


def text_part(text: str = QUESTION) -> dict:
    return {"type": "text", "text": text}


BAD_REQUESTS = {
    "no image": (message("What is in the image?"), 400, "no image"),
    "two images": (message([text_part(), image_part(png_url(sample_image(64))), image_part(png_url(sample_image(64)))]),
                   400, "exactly one image_url"),
    "no question": (message([image_part(png_url(sample_image(64)))]), 400, "no question"),
    "corrupt image": (message([text_part(), image_part("data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAA")]), 400,
                      "not a readable image"),
    "bad base64": (message([text_part(), image_part("data:image/png;base64,@@@")]), 400, "base64"),
    "remote url": (message([text_part(), image_part("https://example.com/a.png")]), 400, "remote URLs"),
    "too many pixels": (message([text_part(), image_part(png_url(np.zeros((500, 500, 3), np.uint8)))]), 413,
                        "pixels"),
    "two turns": ({**message([text_part(), image_part(png_url(sample_image(64)))]),
                   "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                                {"role": "user", "content": [text_part(), image_part(png_url(sample_image(64)))]}]},
                  400, "exactly one user message"),
    "n = 2": ({**message([text_part(), image_part(png_url(sample_image(64)))]), "n": 2}, 400, "n:"),
    "negative temperature": ({**message([text_part(), image_part(png_url(sample_image(64)))]), "temperature": -1},
                             400, "temperature"),
    "negative seed": ({**message([text_part(), image_part(png_url(sample_image(64)))]), "temperature": 0.5, "seed": -1},
                      400, "seed: expected an integer >= 0"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_a_bad_request_gets_a_clear_json_error(strict, case):
    server, _, _ = strict
    body, status, words = BAD_REQUESTS[case]
    r = httpx.post(f"{server.url}/v1/chat/completions", json=body, headers=KEY, timeout=60)
    assert r.status_code == status, r.text
    assert words in r.json()["error"]["message"] and r.json()["error"]["code"] == status


def test_a_negative_seed_on_the_native_endpoint_is_a_400_naming_it(strict):
    server, _, _ = strict
    r = httpx.post(f"{server.url}/v1/ask", params={"decoding": "sample", "seed": -1, "max_new_tokens": 2},
                   content=png(sample_image(64)), headers=KEY, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["message"].startswith("seed: expected an integer >= 0"), r.text


def test_paths_only_inside_allowed_folders(strict):
    server, allowed, outside = strict
    url = f"{server.url}/v1/chat/completions"
    ok = httpx.post(url, json=message([text_part(), image_part(str(allowed / "frame.png"))]), headers=KEY, timeout=60)
    assert ok.status_code == 200, ok.text
    for path in (str(outside / "frame.png"), str(allowed / ".." / outside.name / "frame.png")):
        r = httpx.post(url, json=message([text_part(), image_part(path)]), headers=KEY, timeout=60)
        assert r.status_code == 403 and "outside the allowed folders" in r.json()["error"]["message"]


def test_body_size_and_api_key(strict):
    server, _, _ = strict
    url = f"{server.url}/v1/chat/completions"
    good = message([text_part(), image_part(png_url(sample_image(64)))])
    huge = httpx.post(url, content=b"{" + b" " * (300 * 1024) + b"}",
                      headers={**KEY, "content-type": "application/json"})
    assert huge.status_code == 413 and "limit" in huge.json()["error"]["message"]
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "sesame"}):
        r = httpx.post(url, json=good, headers=headers, timeout=60)
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    assert httpx.get(f"{server.url}/metrics").status_code == 401
    assert httpx.get(f"{server.url}/health").status_code == 200  # health stays open for the orchestrator
    assert httpx.post(url, content=b"not json", headers=KEY).status_code == 400
    assert httpx.post(f"{server.url}/v1/ask", params={"max_new_tokens": "many"}, content=b"x", headers=KEY).json()[
        "error"]["message"].startswith("/v1/ask: max_new_tokens")
    assert httpx.get(f"{server.url}/v1/nothing", headers=KEY).status_code == 404
    assert httpx.post(url, json=good, headers=KEY, timeout=60).status_code == 200


def test_camera_answers_the_newest_frame_and_counts_the_dropped(server, pipe):
    from websockets.sync.client import connect

    frames = [sample_image(seed=30 + i) for i in range(6)]
    ws_url = server.url.replace("http", "ws") + "/v1/camera?question=Is%20there%20a%20car%3F&max_new_tokens=3"
    with connect(ws_url, max_size=None) as ws:
        ws.send(b"not an image")
        broken = json.loads(ws.recv(timeout=120))  # answered before the next frame is sent, so never dropped
        for frame in frames:
            ws.send(png(frame))
        messages = []
        while not messages or messages[-1].get("frame_id") != len(frames):
            messages.append(json.loads(ws.recv(timeout=120)))
        ws.send(json.dumps({"question": "What is in the image?"}))
        assert json.loads(ws.recv(timeout=30)) == {"question": "What is in the image?"}
        ws.send(png(sample_image(96, seed=50)))
        again = json.loads(ws.recv(timeout=120))
    assert broken["frame_id"] == 0 and "not a readable image" in broken["error"]
    answered = [m for m in messages if "answer" in m]
    last = answered[-1]
    assert last["answer"] == expected(pipe, frames[-1], "Is there a car?", 3).answer
    assert len(answered) + last["dropped"] == len(frames)  # every good frame answered or dropped
    assert again["answer"] == expected(pipe, sample_image(96, seed=50), "What is in the image?", 3).answer


def test_batched_questions_about_one_image_are_the_single_answers(pipe):
    image = sample_image(seed=19)
    questions = ["What is in the image?", "Is there a car?", "Describe the image in detail.", "What color is it?"]
    with serving(pipe, max_batch=4, batch_wait_ms=2000) as server:
        outs = [[] for _ in questions]
        threads = [post_in_thread(f"{server.url}/v1/chat/completions", chat_body(png_url(image), q, 5), out)
                   for q, out in zip(questions, outs)]
        for t in threads:
            t.join()
    for q, out in zip(questions, outs):
        assert out[0].status_code == 200
        assert out[0].json()["choices"][0]["message"]["content"] == expected(pipe, image, q, 5).answer


def test_load_every_request_answered_or_refused_and_the_same_answers(pipe):
    images = [sample_image(seed=40 + i) for i in range(2)]
    with serving(pipe, max_queue=2) as server:
        load = run_load(server.url, images, clients=5, requests=15, max_new_tokens=4)
    summary = load.summary()
    assert summary["requests"] == 15 and summary["other"] == 0  # none lost: 200 or 429
    assert summary["answered"] >= 3
    for image, question, answer in load.answers:
        assert answer == expected(pipe, images[image], question, 4).answer


def test_the_cli_serves_on_localhost_and_stops_on_sigterm(tiny_packages):
    import re
    import signal
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "moai_edge.runtime.cli", "serve", "--engine",
                             str(tiny_packages["moai"]), "--port", "0", "--threads", "1"],
                            stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    drain = threading.Thread(target=lambda: lines.extend(proc.stderr))  # the log must never fill the pipe
    drain.start()
    try:
        wait_for(lambda: any("running on" in line for line in lines), timeout=120)
        address = re.search(r"running on (http://[\d.]+:\d+)", "".join(lines)).group(1)
        assert address.startswith("http://127.0.0.1:")
        wait_for(lambda: httpx.get(f"{address}/health/ready").status_code == 200, timeout=120)
        r = httpx.post(f"{address}/v1/ask", params={"max_new_tokens": 2}, content=png(sample_image(64)), timeout=60)
        assert r.status_code == 200 and len(r.json()["tokens"]) <= 2
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
        drain.join()
    assert code == 143 and "interrupted by SIGTERM; the server stopped" in "".join(lines)  # after a graceful shutdown
    assert "Finished server process" in "".join(lines)


def test_without_the_serve_extra_the_error_names_it(monkeypatch, pipe):
    from moai_edge.engines.errors import MissingExtraError

    monkeypatch.setitem(__import__("sys").modules, "fastapi", None)  # as if not installed
    with pytest.raises(MissingExtraError, match=r"moai-edge\[serve\]"):
        create_app(lambda: pipe, ServeConfig(port=0), owns_pipeline=False)


def test_the_token_limit_holds_on_every_endpoint(pipe):
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    with serving(pipe, max_new_tokens=4) as server:
        chat = httpx.post(f"{server.url}/v1/chat/completions", json=chat_body(png_url(sample_image(64)), QUESTION, 8))
        ask = httpx.post(f"{server.url}/v1/ask", params={"max_new_tokens": 8}, content=png(sample_image(64)))
        for r, option in ((chat, "max_tokens"), (ask, "max_new_tokens")):
            assert r.status_code == 400 and r.json()["error"]["message"].startswith(f"{option}: this server answers")
        with connect(server.url.replace("http", "ws") + "/v1/camera?max_new_tokens=8") as ws:
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=30)
        assert closed.value.rcvd.code == 1008 and "at most 4 tokens" in closed.value.rcvd.reason
