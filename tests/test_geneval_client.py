"""geneval-remote against a tiny JSON server on 127.0.0.1 (threading + http.server)."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

import vgpo.rewards as rewards
from vgpo.errors import VgpoError
from vgpo.rewards.geneval_client import decode_png


class FakeGenEval:
    """Scores each image by its mean red value; fails the first ``fail_first`` requests with 503."""

    def __init__(self, fail_first: int = 0, status: int = 200, body: bytes | None = None):
        self.fail_first = fail_first
        self.status = status
        self.body = body
        self.requests: list[dict] = []
        self.calls = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_POST(self):
                server.calls += 1
                length = int(self.headers["Content-Length"])
                raw = self.rfile.read(length)
                if server.calls <= server.fail_first:
                    self._send(503, b"busy")
                    return
                if server.body is not None:
                    self._send(server.status, server.body)
                    return
                assert self.headers["Content-Type"] == "application/json"
                req = json.loads(raw)
                server.requests.append(req)
                reds = [float(decode_png(img)[..., 0].mean()) / 255 for img in req["images"]]
                reply = {
                    "scores": reds,
                    "rewards": [1.0 if r > 0.5 else 0.0 for r in reds],
                    "strict_rewards": [0.0 for _ in reds],
                    "group_rewards": {m["tag"]: [1.0] for m in req["metadata"]},
                }
                self._send(200, json.dumps(reply).encode())

            def _send(self, status, payload):
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


def images_with_red(values):
    imgs = torch.zeros(len(values), 3, 8, 8)
    for i, v in enumerate(values):
        imgs[i, 0] = v
    return imgs


META = [{"tag": "single_object", "include": [{"class": "cat", "count": 1}], "prompt": "a photo of a cat"}]


def test_scores_batches_and_schema():
    values = [0.0, 0.25, 0.75, 1.0, 0.4]
    with FakeGenEval() as server:
        r = rewards.build("geneval-remote", url=server.url, batch_size=2, timeout=5)
        out = r(images_with_red(values), ["a photo of a cat"] * 5, META * 5)
    assert out.shape == (5,) and out.dtype == torch.float32
    torch.testing.assert_close(out, torch.tensor(values), atol=1 / 255, rtol=0)  # PNG is lossless, uint8
    assert len(server.requests) == 3  # 2 + 2 + 1
    req = server.requests[0]
    assert set(req) == {"images", "prompts", "metadata", "only_strict"}
    assert req["metadata"][0]["include"][0]["class"] == "cat" and req["only_strict"] is False
    assert r.last_details["rewards"] == [0.0, 0.0, 1.0, 1.0, 0.0]
    assert r.last_details["group_rewards"]["single_object"] == [1.0, 1.0, 1.0]


def test_field_selects_the_returned_list():
    with FakeGenEval() as server:
        r = rewards.build("geneval-remote", url=server.url, field="rewards", timeout=5)
        out = r(images_with_red([0.9, 0.1]), ["x", "y"], META * 2)
    assert out.tolist() == [1.0, 0.0]


def test_retries_with_backoff_then_success():
    with FakeGenEval(fail_first=2) as server:
        r = rewards.build("geneval-remote", url=server.url, retries=2, backoff=0.05, timeout=5)
        start = time.monotonic()
        out = r(images_with_red([1.0]), ["x"], META)
        elapsed = time.monotonic() - start
    assert server.calls == 3
    assert out.tolist() == [pytest.approx(1.0)]
    assert elapsed >= 0.05 + 0.1  # backoff 0.05 then 0.1


def test_server_error_exhausts_retries():
    with FakeGenEval(fail_first=10) as server:
        r = rewards.build("geneval-remote", url=server.url, retries=1, backoff=0.01, timeout=5)
        with pytest.raises(VgpoError, match="HTTP 503"):
            r(images_with_red([1.0]), ["x"], META)
    assert server.calls == 2


def test_client_error_and_bad_json_fail_at_once():
    with FakeGenEval(status=400, body=b'{"error": "bad metadata"}') as server:
        r = rewards.build("geneval-remote", url=server.url, retries=3, backoff=0.01, timeout=5)
        with pytest.raises(VgpoError, match="HTTP 400.*bad metadata"):
            r(images_with_red([1.0]), ["x"], META)
    assert server.calls == 1
    with FakeGenEval(body=b"not json") as server:
        r = rewards.build("geneval-remote", url=server.url, retries=3, backoff=0.01, timeout=5)
        with pytest.raises(VgpoError, match="not JSON"):
            r(images_with_red([1.0]), ["x"], META)
    with FakeGenEval(body=b'{"scores": [1.0, 2.0]}') as server:
        r = rewards.build("geneval-remote", url=server.url, timeout=5)
        with pytest.raises(VgpoError, match="list of 1 finite numbers"):
            r(images_with_red([1.0]), ["x"], META)


def test_unreachable_server_is_one_line_error_naming_the_url():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now: connection refused
    url = f"http://127.0.0.1:{port}/"
    r = rewards.build("geneval-remote", url=url, retries=1, backoff=0.01, timeout=2)
    with pytest.raises(VgpoError) as err:
        r(images_with_red([1.0]), ["x"], META)
    msg = str(err.value)
    assert url in msg and "2 attempt" in msg and "\n" not in msg


def test_bad_options_and_inputs():
    with pytest.raises(VgpoError, match="url"):
        rewards.build("geneval-remote", url="127.0.0.1:18085")
    with pytest.raises(VgpoError, match="field"):
        rewards.build("geneval-remote", field="accuracy")
    r = rewards.build("geneval-remote")
    with pytest.raises(VgpoError, match="metadata rows"):
        r(images_with_red([1.0, 1.0]), ["x", "y"], META)
    with pytest.raises(VgpoError, match="JSON"):
        r(images_with_red([1.0]), ["x"], [{"bad": object()}])


class ScriptedServer:
    """A server on 127.0.0.1 whose n-th POST is answered by ``script[n]`` (the last one repeats):
    ("ok", scores) | ("cut", declared_bytes) a body cut short | ("trickle", seconds_per_byte)."""

    def __init__(self, script):
        self.script, self.calls, self.stop = script, 0, threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                self.rfile.read(int(self.headers["Content-Length"]))
                kind, arg = server.script[min(server.calls, len(server.script) - 1)]
                server.calls += 1
                body = json.dumps({"scores": arg if kind == "ok" else [1.0]}).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(arg if kind == "cut" else len(body)))
                self.end_headers()
                if kind == "ok":
                    self.wfile.write(body)
                elif kind == "cut":  # then the connection closes
                    self.wfile.write(body[:5])
                else:
                    for byte in body:  # bounded: the body's length, or until the test ends
                        if server.stop.wait(arg):
                            return
                        try:
                            self.wfile.write(bytes([byte]))
                            self.wfile.flush()
                        except OSError:
                            return

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


def test_timeout_bounds_the_whole_call_not_each_read():
    """A server that trickles a byte every 0.3 s (each read is fast) is cut off at the 1 s deadline."""
    with ScriptedServer([("trickle", 0.3)]) as server:
        r = rewards.build("geneval-remote", url=server.url, retries=1, backoff=0.01, timeout=1)
        start = time.monotonic()
        with pytest.raises(VgpoError, match="timed out after 1 s") as err:
            r(images_with_red([1.0]), ["x"], META)
        elapsed = time.monotonic() - start
    assert server.calls == 2 and elapsed < 4, elapsed  # 2 attempts of ~1 s
    assert "2 attempt" in str(err.value)


def test_a_response_cut_short_is_retried():
    with ScriptedServer([("cut", 200), ("ok", [0.5])]) as server:
        r = rewards.build("geneval-remote", url=server.url, retries=1, backoff=0.01, timeout=5)
        assert r(images_with_red([1.0]), ["x"], META).tolist() == [0.5]
    assert server.calls == 2
    with ScriptedServer([("cut", 200)]) as server:
        r = rewards.build("geneval-remote", url=server.url, retries=1, backoff=0.01, timeout=5)
        with pytest.raises(VgpoError, match="IncompleteRead"):
            r(images_with_red([1.0]), ["x"], META)


@pytest.mark.parametrize(
    "body, match",
    [
        (b'{"scores": [NaN]}', "non-finite number"),
        (b'{"scores": [Infinity]}', "non-finite number"),
        (b'{"scores": [-Infinity]}', "non-finite number"),
        (b'{"scores": [1e308]}', "finite numbers"),
        (b'{"scores": ["0.5"]}', "finite numbers"),
        (b'{"scores": [true]}', "finite numbers"),
        (b'{"scores": [0.5], "group_rewards": [1, 2]}', "group_rewards"),
        (b'{"scores": [0.5], "group_rewards": {"counting": 1.0}}', "group_rewards"),
        (b'{"scores": [0.5], "group_strict_rewards": {"counting": [NaN]}}', "non-finite"),
        (b'{"scores": [0.5], "group_rewards": {"counting": ["x"]}}', "group_rewards"),
    ],
)
def test_every_score_must_be_a_finite_number(body, match):
    with FakeGenEval(body=body) as server:
        r = rewards.build("geneval-remote", url=server.url, retries=3, backoff=0.01, timeout=5)
        with pytest.raises(VgpoError, match=match) as err:
            r(images_with_red([1.0]), ["x"], META)
    assert server.calls == 1 and "\n" not in str(err.value)  # not retried: the server would say it again


def test_response_size_is_capped():
    body = json.dumps({"scores": [0.5], "padding": "x" * 5000}).encode()
    with FakeGenEval(body=body) as server:
        r = rewards.build("geneval-remote", url=server.url, timeout=5, max_response_bytes=1000)
        with pytest.raises(VgpoError, match="max_response_bytes=1000"):
            r(images_with_red([1.0]), ["x"], META)
        r = rewards.build("geneval-remote", url=server.url, timeout=5, max_response_bytes=10000)
        assert r(images_with_red([1.0]), ["x"], META).tolist() == [0.5]
