"""Concurrent generate requests to the web app on the bundled model, batched and not; JSON out.

    python bench/serving_batch.py --out bench/results/serving_batch.json

Two app servers run as their own processes (``python -m arnodes.ui.app``), as a user would start
them: one with request batching (the default), one with ``ARNODES_BATCH_MAX=1`` (each request in
turn). This process drives them over HTTP through the app's REST route (``/gradio_api/call/generate``,
what ``curl`` or any HTTP client uses): N requests (one class, batch 1, each its own seed) are sent
at the same moment from N threads, and the wall time until the last image is fetched is measured,
against one request alone (warm, median). Each thread is one user with its own session, kept across
that user's requests as a browser tab or a ``gradio_client.Client`` keeps it (a call without a session
makes Gradio build a fresh session state, ~12 ms of the server's event loop on this 2-core machine,
which a user pays once, when the page opens). Every request has a seed no earlier request used, so the
app's output cache answers none of them. Each image from a batched burst is compared with the image
the unbatched server gives for the same request alone (bit-exact pixels).

gradio_client is not the driver: its jobs reach the server up to ~170 ms apart on this 2-core machine
(each starts its own thread and handshake), so a "burst" of 8 never arrived together.
"""
from __future__ import annotations

import argparse
import functools
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

from arnodes.engine.batching import BatchSettings
from arnodes.engine.registry import DEFAULT_MODEL
from common import env_info, write_json

CLASSES = ["red heart", "sun", "fire", "pizza", "cat face", "rocket", "star", "rainbow"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def app_server(env_extra: dict[str, str], workdir: Path) -> Iterator[str]:
    """A web-app process on a free port; yields its base URL once it answers."""
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, **env_extra, "GRADIO_ANALYTICS_ENABLED": "False"}
    log = open(workdir / f"server-{port}.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "arnodes.ui.app", "--port", str(port)], env=env,
                            stdout=log, stderr=subprocess.STDOUT, cwd=str(workdir))
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                _defaults(base)
                break
            except OSError:  # not up yet
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the app server did not start; see {log.name}") from None
                time.sleep(0.5)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


@functools.cache
def _defaults(base: str) -> list:
    """The /generate route's default inputs, in order (the app's API description; read once per server)."""
    with urllib.request.urlopen(f"{base}/gradio_api/info", timeout=10) as response:
        params = json.loads(response.read())["named_endpoints"]["/generate"]["parameters"]
    return [p["parameter_default"] for p in params]


def _generate(base: str, defaults: list, seed: int, user: int) -> str:
    """One request of user ``user`` (its session) through the REST route; the URL of its gallery image."""
    data = [DEFAULT_MODEL, [CLASSES[seed % len(CLASSES)]], seed, False, 4.0, 0, 1.0, 1.0, 1]
    body = json.dumps({"data": data + defaults[len(data):], "session_hash": f"bench-user-{user}"}).encode()
    post = urllib.request.Request(f"{base}/gradio_api/call/generate", data=body,
                                  headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(post, timeout=60) as response:
        event_id = json.loads(response.read())["event_id"]
    with urllib.request.urlopen(f"{base}/gradio_api/call/generate/{event_id}", timeout=600) as stream:
        event = None
        for raw in stream:  # server-sent events: "event: <kind>" then "data: <json>"
            line = raw.decode().strip()
            if line.startswith("event:"):
                event = line[len("event:"):].strip()
            elif line.startswith("data:") and event in ("complete", "error"):
                if event == "error":
                    raise RuntimeError(f"request {seed} failed: {line[:300]}")
                return json.loads(line[len("data:"):])[0][0]["image"]["url"]
    raise RuntimeError(f"request {seed}: the event stream ended without a result")


def _fetch_image(url: str) -> np.ndarray:
    with urllib.request.urlopen(url, timeout=60) as response:
        return np.asarray(Image.open(io.BytesIO(response.read())).convert("RGB"))


def _burst(base: str, seeds: list[int]) -> tuple[float, list[np.ndarray]]:
    """Send one request per seed at the same moment (one thread each, user i sending the i-th, released
    together); seconds until the last image is fetched, and the images. As a browser does, only the
    gallery image is fetched."""
    defaults = _defaults(base)
    images: list = [None] * len(seeds)
    errors: list[BaseException] = []
    start = threading.Barrier(len(seeds) + 1)

    def one(i: int, seed: int) -> None:
        start.wait()
        try:
            images[i] = _fetch_image(_generate(base, defaults, seed, user=i))
        except BaseException as e:  # noqa: BLE001 - raised below
            errors.append(e)
    threads = [threading.Thread(target=one, args=(i, s)) for i, s in enumerate(seeds)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return wall, images


def _measure(base: str, concurrency: list[int], repeats: int, seed_base: int) -> tuple[dict, dict[int, np.ndarray]]:
    """Warm-up (every user's session opened), one request alone (median of 8), then bursts; every
    request a fresh seed."""
    _burst(base, list(range(seed_base - max(concurrency), seed_base)))
    solo = [_burst(base, [seed_base + i])[0] for i in range(8)]
    out = {"one_request_s": round(statistics.median(solo), 4), "one_request_all_s": [round(t, 4) for t in solo],
           "bursts": []}
    images: dict[int, np.ndarray] = {}
    next_seed = seed_base + 100
    for n in concurrency:
        times = []
        for _ in range(repeats):
            seeds = list(range(next_seed, next_seed + n))
            next_seed += n
            t, imgs = _burst(base, seeds)
            times.append(t)
            images.update(zip(seeds, imgs))
        wall = statistics.median(times)
        out["bursts"].append({"concurrent": n, "wall_s": round(wall, 4), "all_s": [round(t, 4) for t in times],
                              "ratio_to_one": round(wall / out["one_request_s"], 2)})
        print(n, out["bursts"][-1], file=sys.stderr)
    return out, images


def engine_batch_cost(sizes: list[int], repeats: int = 5) -> tuple[dict, dict]:
    """Seconds to generate, and to decode the tokens to pixels, a batch of each size in this process (no
    HTTP, no PNG): how much more a batch costs than one image on this device, the floor under any
    serving ratio."""
    import torch

    from arnodes.engine.conditioning import Conditioning
    from arnodes.engine.generate import generate
    from arnodes.engine.loader import load_bundle
    from arnodes.engine.sampling import SamplingParams
    from arnodes.engine.tasks import decode
    bundle = load_bundle(DEFAULT_MODEL)
    gen_s, dec_s = {}, {}
    for n in sizes:
        cond = Conditioning(class_ids=tuple(range(n)), cfg=4.0)
        with torch.no_grad():
            decode(bundle, generate(bundle, cond, params=SamplingParams(), seed=0))
        gen_t, dec_t = [], []
        for r in range(repeats):
            with torch.no_grad():
                t0 = time.perf_counter()
                canvas = generate(bundle, cond, params=SamplingParams(), seed=r)
                t1 = time.perf_counter()
                decode(bundle, canvas)
                t2 = time.perf_counter()
            gen_t.append(t1 - t0)
            dec_t.append(t2 - t1)
        gen_s[str(n)] = round(statistics.median(gen_t), 4)
        dec_s[str(n)] = round(statistics.median(dec_t), 4)
    return gen_s, dec_s


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--concurrency", type=int, nargs="+", default=[8, 16])
    p.add_argument("--repeats", type=int, default=3, help="bursts of each size (median reported)")
    p.add_argument("--check", type=int, default=16, help="batched images compared with solo runs")
    p.add_argument("--out")
    a = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="arnodes-serving-"))
    settings = BatchSettings.from_env()
    with app_server({}, work) as base:
        batched, batched_images = _measure(base, a.concurrency, a.repeats, seed_base=1000)
    with app_server({"ARNODES_BATCH_MAX": "1"}, work) as base:
        unbatched, _ = _measure(base, a.concurrency, a.repeats, seed_base=50000)
        checked = sorted(batched_images)[: a.check]
        same = [bool(np.array_equal(_burst(base, [s])[1][0], batched_images[s])) for s in checked]
    engine, engine_decode = engine_batch_cost([1, *a.concurrency])
    result = {"model": DEFAULT_MODEL,
              "path": "web app over HTTP (REST route /gradio_api/call/generate, all requests sent at once, each "
                      "from its own user session), 1 class x batch 1 per request, each request a new seed",
              "batch_settings": {"max_images": settings.max_images, "window_s": settings.window_s,
                                 "grace_s": settings.grace_s},
              "batched": batched, "unbatched": unbatched,
              "engine_generate_s": engine, "engine_decode_s": engine_decode,
              "identical_to_solo": {"checked": len(same), "identical": sum(same)},
              "targets": {"8": 2.5, "16": 4.0}, "env": env_info("cpu")}
    write_json(result, a.out)


if __name__ == "__main__":
    main()
