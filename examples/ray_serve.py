"""Serve arnodes workflows over HTTP with Ray Serve: replicas, each with its own batcher and model cache.

    pip install "ray[serve]"                        # optional; not needed by arnodes itself
    python examples/ray_serve.py                    # starts locally on CPU, sends a burst, prints timings
    python examples/ray_serve.py --keep-running     # then: curl -X POST localhost:8000/ -d @request.json

A request is ``{"workflow": {API workflow}, "set": ["3.seed=7", ...]}``; the answer is
``{"images": [{"filename", "png_base64"}]}`` or ``{"error": ...}`` with status 400 (bad request or
input) or 500 (our bug; traceback in the replica's log). ``docs/serving.md`` explains the layout.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

WORKFLOW = Path(__file__).resolve().parent.parent / "workflows" / "generate.json"


def build_app(replicas: int, gpus_per_replica: float, max_ongoing: int):
    """The Ray Serve application: ``replicas`` copies of one deployment. Each replica is a process
    with one WorkflowService, so it has its own model cache (on its GPU) and its own request batcher;
    ``max_ongoing`` requests run in it at once (threads), which is what lets the batcher form batches."""
    from ray import serve
    from starlette.requests import Request
    from starlette.responses import JSONResponse

    @serve.deployment(num_replicas=replicas, max_ongoing_requests=max_ongoing,
                      ray_actor_options={"num_gpus": gpus_per_replica, "num_cpus": 1})
    class ArnodesWorkflows:
        def __init__(self) -> None:
            from arnodes.graph.service import WorkflowService
            self.service = WorkflowService()
            self.pool = ThreadPoolExecutor(max_workers=max_ongoing)  # runs overlap: the batcher batches them

        async def __call__(self, request: Request) -> JSONResponse:
            try:
                body = await request.json()
            except ValueError:
                return JSONResponse({"error": "the request body is not JSON"}, status_code=400)
            status, answer = await asyncio.get_running_loop().run_in_executor(
                self.pool, self.service.handle_json, body)
            return JSONResponse(answer, status_code=status)

    return ArnodesWorkflows.bind()


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=300) as response:
        return json.loads(response.read())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--replicas", type=int, default=1)
    p.add_argument("--gpus-per-replica", type=float, default=0.0, help="1 on a GPU machine: one replica per GPU")
    p.add_argument("--max-ongoing", type=int, default=16)
    p.add_argument("--burst", type=int, default=8, help="requests sent at once after one alone")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--keep-running", action="store_true")
    a = p.parse_args()
    try:
        import ray
        from ray import serve
    except ImportError:
        print('error: this example needs Ray Serve, which arnodes does not install: pip install "ray[serve]"',
              file=sys.stderr)
        return 2
    ray.init(num_cpus=max(2, a.replicas), include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": a.port})
    serve.run(build_app(a.replicas, a.gpus_per_replica, a.max_ongoing), route_prefix="/")
    url = f"http://127.0.0.1:{a.port}/"
    workflow = json.loads(WORKFLOW.read_text())
    _post(url, {"workflow": workflow, "set": ["3.seed=0"]})  # warm-up: loads the model in the replica
    t0 = time.perf_counter()
    one = _post(url, {"workflow": workflow, "set": ["3.seed=1"]})
    alone = time.perf_counter() - t0
    t0 = time.perf_counter()
    with ThreadPoolExecutor(a.burst) as pool:
        answers = list(pool.map(lambda s: _post(url, {"workflow": workflow, "set": [f"3.seed={s}"]}),
                                range(100, 100 + a.burst)))
    burst = time.perf_counter() - t0
    bad = _post_expecting_error(url, {"workflow": workflow, "set": ["3.seed=-1"]})
    print(json.dumps({"one_request_s": round(alone, 3), "burst": a.burst, "burst_s": round(burst, 3),
                      "images": sum(len(x["images"]) for x in answers) + len(one["images"]), "bad_request": bad}))
    if a.keep_running:
        print(f"serving on {url}; Ctrl-C stops", file=sys.stderr)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    serve.shutdown()
    ray.shutdown()
    return 0


def _post_expecting_error(url: str, body: dict) -> str:
    try:
        _post(url, body)
    except urllib.error.HTTPError as e:
        return f"{e.code}: {json.loads(e.read())['error']}"
    return "accepted?"


if __name__ == "__main__":
    sys.exit(main())
