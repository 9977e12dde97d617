"""``geneval-remote``: client for a GenEval detector server over HTTP + JSON (standard library only).

Flow-GRPO runs GenEval's mmdet object detector as a separate service (its environment conflicts
with the trainer's); this client sends it the images and each prompt's GenEval metadata. Nothing is
pickled: requests and responses are JSON, images are base64 PNG.

Request: ``POST {url}`` with ``Content-Type: application/json``, one request per ``batch_size``
images::

    {
      "images": ["<base64 PNG>", ...],          # RGB, 8-bit, the generated images in order
      "prompts": ["a photo of a cat", ...],     # same length
      "metadata": [{"tag": "single_object", "include": [{"class": "cat", "count": 1}],
                    "prompt": "a photo of a cat"}, ...],   # GenEval's per-prompt metadata, as given
      "only_strict": false
    }

Response: ``200`` with a JSON object; ``scores`` is required, the rest optional::

    {
      "scores": [0.75, ...],            # per image, Flow-GRPO's training reward: graded partial credit, exact counts
      "rewards": [1.0, ...],            # per image, GenEval's accuracy: 1 or 0, counts are minimums
      "strict_rewards": [0.0, ...],     # per image, 1 or 0 with exact counts
      "group_rewards": {"counting": [...], ...},
      "group_strict_rewards": {"counting": [...], ...}
    }

Lists must have one finite number per image (``NaN``, ``Infinity`` and values beyond float32's range
are refused); ``group_rewards`` maps group names to lists of numbers. ``field`` picks which list is
returned as the reward (default ``scores``); all per-image lists of the last call are in
``last_details``.

Failures: connection errors, timeouts, responses cut short (``IncompleteRead``) and HTTP 5xx are
retried ``retries`` times with exponential backoff (``backoff * 2**attempt`` seconds); then a one-line
``VgpoError`` names the URL. ``timeout`` bounds each attempt as a whole (connecting, sending, and
reading every byte of the answer: a server that trickles its answer is cut off), not each socket read.
HTTP 4xx, answers over ``max_response_bytes`` and malformed responses fail at once (a retry would not
help).
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import math
import socket
import threading
import time
import urllib.parse
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from vgpo.errors import VgpoError
from vgpo.rewards import register

PER_IMAGE_FIELDS = ("scores", "rewards", "strict_rewards")
GROUP_FIELDS = ("group_rewards", "group_strict_rewards")
FLOAT32_MAX = float(torch.finfo(torch.float32).max)


def encode_png(image: np.ndarray) -> str:
    """(H, W, 3) uint8 -> base64 PNG string."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def decode_png(data: str) -> np.ndarray:
    """Inverse of :func:`encode_png` (for servers and tests)."""
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"))


class _Transient(Exception):
    """A failure worth retrying."""


@register("geneval-remote")
class GenEvalRemoteReward:
    def __init__(
        self,
        url: str = "http://127.0.0.1:18085",
        timeout: float = 120.0,
        retries: int = 3,
        backoff: float = 1.0,
        batch_size: int = 64,
        only_strict: bool = False,
        field: str = "scores",
        max_response_bytes: int = 16 * 2**20,
    ):
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise VgpoError(f"geneval-remote.url: expected an http:// or https:// URL, got {url!r}")
        if field not in PER_IMAGE_FIELDS:
            raise VgpoError(f"geneval-remote.field: expected one of {', '.join(PER_IMAGE_FIELDS)}, got {field!r}")
        for name, value in (("timeout", timeout), ("backoff", backoff)):
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise VgpoError(f"geneval-remote.{name}: expected a finite number >= 0, got {value!r}")
        if not isinstance(max_response_bytes, int) or max_response_bytes < 1:
            raise VgpoError(f"geneval-remote.max_response_bytes: expected an integer >= 1, got {max_response_bytes!r}")
        if not isinstance(retries, int) or retries < 0:
            raise VgpoError(f"geneval-remote.retries: expected an integer >= 0, got {retries!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise VgpoError(f"geneval-remote.batch_size: expected an integer >= 1, got {batch_size!r}")
        self.url = url
        self.timeout = float(timeout)
        self.retries = retries
        self.backoff = float(backoff)
        self.batch_size = batch_size
        self.only_strict = bool(only_strict)
        self.field = field
        self.max_response_bytes = max_response_bytes
        parsed = urllib.parse.urlsplit(url)
        if not parsed.hostname:
            raise VgpoError(f"geneval-remote.url: no host in {url!r}")
        self._parsed = parsed
        self.last_details: dict[str, Any] = {}

    def __call__(self, images: torch.Tensor, prompts: Sequence[str], metadata: Sequence[dict]) -> torch.Tensor:
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
            raise VgpoError("geneval-remote: expected images of shape (B, 3, H, W) in [0, 1]")
        n = images.shape[0]
        if len(prompts) != n or len(metadata) != n:
            raise VgpoError(f"geneval-remote: {n} images, {len(prompts)} prompts, {len(metadata)} metadata rows")
        arr = (images.detach().float() * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        per_image: dict[str, list[float]] = {}
        groups: dict[str, dict[str, list]] = {}
        for start in range(0, n, self.batch_size):
            stop = min(start + self.batch_size, n)
            payload = {
                "images": [encode_png(a) for a in arr[start:stop]],
                "prompts": list(prompts[start:stop]),
                "metadata": list(metadata[start:stop]),
                "only_strict": self.only_strict,
            }
            try:
                body = json.dumps(payload).encode("utf-8")
            except (TypeError, ValueError) as err:
                raise VgpoError(f"geneval-remote: metadata is not JSON-serialisable ({err})") from None
            reply = self._post(body)
            self._check(reply, stop - start)
            for key in PER_IMAGE_FIELDS:
                if key in reply:
                    per_image.setdefault(key, []).extend(float(v) for v in reply[key])
            for key in GROUP_FIELDS:
                for group, values in (reply.get(key) or {}).items():
                    groups.setdefault(key, {}).setdefault(group, []).extend(float(v) for v in values)
        if self.field not in per_image:
            raise VgpoError(f"geneval-remote: the server at {self.url} sent no '{self.field}' list")
        self.last_details = {**per_image, **groups}
        return torch.tensor(per_image[self.field], dtype=torch.float32)

    # --- transport ------------------------------------------------------------------------------
    def _post(self, body: bytes) -> dict:
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                return self._post_once(body)
            except _Transient as err:
                last = str(err)
        raise VgpoError(
            f"geneval-remote: cannot reach the GenEval server at {self.url} after "
            f"{self.retries + 1} attempt(s) ({last})"
        )

    def _post_once(self, body: bytes) -> dict:
        """One attempt, bounded as a whole by ``timeout``: a timer closes the connection when it runs out,
        which ends any read in progress."""
        parsed = self._parsed
        conn_class = http.client.HTTPSConnection if parsed.scheme == "https" else http.client.HTTPConnection
        conn = conn_class(parsed.hostname, parsed.port, timeout=self.timeout or None)
        expired, opened = threading.Event(), []

        def expire() -> None:
            expired.set()
            sock = opened[0] if opened else conn.sock  # (the connection drops its socket once the answer starts)
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

        timer = threading.Timer(self.timeout, expire) if self.timeout else None
        if timer is not None:
            timer.daemon = True
            timer.start()
        try:
            path = (parsed.path or "/") + (f"?{parsed.query}" if parsed.query else "")
            conn.connect()
            opened.append(conn.sock)
            conn.request(
                "POST", path, body=body, headers={"Content-Type": "application/json", "Accept": "application/json"}
            )
            response = conn.getresponse()
            raw = self._read_capped(response)
            status = response.status
        except (http.client.HTTPException, OSError) as err:  # IncompleteRead, RemoteDisconnected, timeouts, ...
            if expired.is_set() or isinstance(err, (socket.timeout, TimeoutError)):
                raise _Transient(f"timed out after {self.timeout:g} s") from None
            raise _Transient(f"{type(err).__name__}: {err}".rstrip(": ")) from None
        finally:
            if timer is not None:
                timer.cancel()
            conn.close()
        if expired.is_set():
            raise _Transient(f"timed out after {self.timeout:g} s")
        if status >= 500:
            raise _Transient(f"HTTP {status}")
        if status >= 400:
            detail = raw[:200].decode("utf-8", "replace").strip().replace("\n", " ")
            raise VgpoError(f"geneval-remote: the server at {self.url} answered HTTP {status}: {detail}")
        if status != 200:
            raise VgpoError(f"geneval-remote: the server at {self.url} answered HTTP {status}, expected 200")
        try:
            reply = json.loads(raw, parse_constant=_refuse_constant)
        except _NonFinite as err:
            raise VgpoError(f"geneval-remote: the server at {self.url} sent a non-finite number ({err})") from None
        except ValueError:
            raise VgpoError(f"geneval-remote: the server at {self.url} sent a response that is not JSON") from None
        if not isinstance(reply, dict):
            raise VgpoError(f"geneval-remote: the server at {self.url} sent JSON that is not an object")
        return reply

    def _read_capped(self, response: http.client.HTTPResponse) -> bytes:
        """The body, refused as soon as it passes ``max_response_bytes``; a body shorter than its
        Content-Length is an ``IncompleteRead`` (retried)."""
        header = response.getheader("Content-Length") or ""
        expected = int(header) if header.isdigit() else None
        if expected is not None and expected > self.max_response_bytes:
            raise VgpoError(
                f"geneval-remote: the server at {self.url} announced {expected} bytes, more than "
                f"max_response_bytes={self.max_response_bytes}"
            )
        chunks, size = [], 0
        while expected is None or size < expected:
            chunk = response.read1(65536) if expected is None else response.read(min(65536, expected - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if size > self.max_response_bytes:
                raise VgpoError(
                    f"geneval-remote: the server at {self.url} sent more than "
                    f"max_response_bytes={self.max_response_bytes} bytes"
                )
        if expected is not None and size < expected:
            raise http.client.IncompleteRead(b"".join(chunks), expected - size)
        return b"".join(chunks)

    def _check(self, reply: dict, count: int) -> None:
        for key in PER_IMAGE_FIELDS:
            if key not in reply:
                continue
            values = reply[key]
            if not isinstance(values, list) or len(values) != count or not all(map(_is_score, values)):
                raise VgpoError(
                    f"geneval-remote: the server at {self.url} sent '{key}' that is not a list of "
                    f"{count} finite numbers"
                )
        for key in GROUP_FIELDS:
            groups = reply.get(key)
            if groups is None:
                continue
            if not isinstance(groups, dict) or not all(
                isinstance(name, str) and isinstance(values, list) and all(map(_is_score, values))
                for name, values in groups.items()
            ):
                raise VgpoError(
                    f"geneval-remote: the server at {self.url} sent '{key}' that is not a mapping of "
                    "group names to lists of finite numbers"
                )


class _NonFinite(ValueError):
    pass


def _refuse_constant(name: str) -> float:
    raise _NonFinite(name)


def _is_score(value: Any) -> bool:
    """A finite JSON number that float32 holds (1e308 would become inf)."""
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and abs(value) <= FLOAT32_MAX
    )
