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

Lists must have one number per image. ``field`` picks which list is returned as the reward
(default ``scores``); all per-image lists of the last call are in ``last_details``.

Failures: connection errors, timeouts and HTTP 5xx are retried ``retries`` times with exponential
backoff (``backoff * 2**attempt`` seconds); then a one-line ``VgpoError`` names the URL. HTTP 4xx
and malformed responses fail at once (a retry would not help).
"""

from __future__ import annotations

import base64
import io
import json
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from vgpo.errors import VgpoError
from vgpo.rewards import register

PER_IMAGE_FIELDS = ("scores", "rewards", "strict_rewards")


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
    ):
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise VgpoError(f"geneval-remote.url: expected an http:// or https:// URL, got {url!r}")
        if field not in PER_IMAGE_FIELDS:
            raise VgpoError(f"geneval-remote.field: expected one of {', '.join(PER_IMAGE_FIELDS)}, got {field!r}")
        for name, value in (("timeout", timeout), ("backoff", backoff)):
            if not isinstance(value, (int, float)) or value < 0:
                raise VgpoError(f"geneval-remote.{name}: expected a number >= 0, got {value!r}")
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
            for key in ("group_rewards", "group_strict_rewards"):
                for group, values in (reply.get(key) or {}).items():
                    groups.setdefault(key, {}).setdefault(group, []).extend(values)
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
        raise VgpoError(f"geneval-remote: cannot reach the GenEval server at {self.url} after "
                        f"{self.retries + 1} attempt(s) ({last})")

    def _post_once(self, body: bytes) -> dict:
        request = urllib.request.Request(
            self.url, data=body, method="POST",
            headers={"Content-Type": "application/json", "Accept": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as err:
            detail = err.read()[:200].decode("utf-8", "replace").strip().replace("\n", " ")
            if err.code >= 500:
                raise _Transient(f"HTTP {err.code}") from None
            raise VgpoError(f"geneval-remote: the server at {self.url} answered HTTP {err.code}: {detail}") from None
        except urllib.error.URLError as err:
            raise _Transient(str(err.reason)) from None
        except TimeoutError:
            raise _Transient(f"timed out after {self.timeout:g} s") from None
        except (ConnectionError, OSError) as err:
            raise _Transient(str(err) or type(err).__name__) from None
        try:
            reply = json.loads(raw)
        except ValueError:
            raise VgpoError(f"geneval-remote: the server at {self.url} sent a response that is not JSON") from None
        if not isinstance(reply, dict):
            raise VgpoError(f"geneval-remote: the server at {self.url} sent JSON that is not an object")
        return reply

    def _check(self, reply: dict, count: int) -> None:
        for key in PER_IMAGE_FIELDS:
            if key not in reply:
                continue
            values = reply[key]
            if (not isinstance(values, list) or len(values) != count
                    or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)):
                raise VgpoError(f"geneval-remote: the server at {self.url} sent '{key}' that is not a list of "
                                f"{count} numbers")
