"""16 clients at once against the launched app (loopback only): every request completes, each result is
the one its own request asks for (identical to the same request made alone), memory stays bounded."""
from __future__ import annotations

import resource
import threading
import time

import numpy as np
import pytest
from PIL import Image

gradio_client = pytest.importorskip("gradio_client", reason="the web-app tests need the [test] extra")
pytest.importorskip("gradio", reason="the web-app tests need the [ui] extra")

import ui_support  # noqa: E402  (tests/ is on sys.path, see tests/conftest.py)
from gradio_client import Client  # noqa: E402

CLIENTS = 16
CLASSES = ["red heart", "sun", "fire", "pizza", "cat face", "rainbow", "red apple", "grinning face"]


def request(i: int) -> dict:
    return {"classes": [CLASSES[i % len(CLASSES)]], "batch": 1, "seed": 100 + i, "randomize": False, "cfg": 4.0,
            "top_k": 0, "top_p": 1.0, "temperature": 1.2}


def pixels(gallery: list) -> np.ndarray:
    (item,) = gallery
    return np.asarray(Image.open(item["image"]).convert("RGB"))


@pytest.mark.slow
def test_sixteen_concurrent_clients_each_get_their_own_result(tmp_path):
    from arnodes.ui.app import build_app
    from arnodes.ui.callbacks import WorkflowRunner

    with pytest.MonkeyPatch.context() as mp:
        model, _, size = ui_support.pick_model(tmp_path, mp)
        with ui_support.serving(build_app(WorkflowRunner(tmp_path / "work"))) as url:
            results: dict[int, np.ndarray] = {}
            errors: dict[int, str] = {}
            start = threading.Barrier(CLIENTS)

            def one(i: int) -> None:
                try:
                    client = Client(url, verbose=False, download_files=str(tmp_path / f"dl{i}"))
                    start.wait()
                    gallery, _, seed = client.predict(model, api_name="/generate", **request(i))
                    assert seed == 100 + i
                    results[i] = pixels(gallery)
                except Exception as e:  # noqa: BLE001 - collected and reported below with the client's index
                    errors[i] = f"{type(e).__name__}: {e}"

            rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            started = time.perf_counter()
            threads = [threading.Thread(target=one, args=(i,)) for i in range(CLIENTS)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=600)
            wall = time.perf_counter() - started
            grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
            print(f"\n{CLIENTS} concurrent clients: {len(results)} results, {len(errors)} failures, "
                  f"{wall:.1f} s wall, peak RSS +{grown_mib:.0f} MiB")
            assert not errors, errors
            assert sorted(results) == list(range(CLIENTS))
            assert grown_mib < 1024, f"memory grew by {grown_mib:.0f} MiB"
            alone = Client(url, verbose=False, download_files=str(tmp_path / "alone"))
            for i in range(CLIENTS):  # identical to the same request made alone: nothing went to the wrong client
                gallery, _, _ = alone.predict(model, api_name="/generate", **request(i))
                assert results[i].shape == (size, size, 3)
                assert np.array_equal(results[i], pixels(gallery)), f"client {i} got another request's image"
            assert len({r.tobytes() for r in results.values()}) >= len(CLASSES), "results are not distinct"


class SlowRunner(ui_support.MockRunner):
    """A run takes a few seconds unless its session cancels it (a long generation, without the model)."""

    def run(self, workflow, on_event=None, cancel=None, extra_pnginfo=None, ui_out=None):
        from arnodes.engine.errors import CancelledError

        for _ in range(100):
            if cancel is not None and cancel.is_set():
                raise CancelledError("cancelled by the user")
            time.sleep(0.05)
        return super().run(workflow, on_event, cancel, extra_pnginfo)


def test_a_full_queue_says_so_and_cancel_frees_the_slot(tmp_path, monkeypatch):
    """One device slot and room for two waiting jobs: of five clients at once, three are accepted and
    two are told the queue is full; cancelling the running job lets the waiting ones finish."""
    from arnodes.ui import presets
    from arnodes.ui.app import build_app

    monkeypatch.setattr(presets, "CONCURRENT_RUNS", 1)
    monkeypatch.setattr(presets, "QUEUE_SIZE", 2)
    with ui_support.serving(build_app(SlowRunner(tmp_path / "work"))) as url:
        clients = [Client(url, verbose=False, download_files=str(tmp_path / f"dl{i}")) for i in range(5)]
        first = clients[0].submit("mock-model", api_name="/generate", **request(0))
        while first.status().code.name not in ("PROCESSING", "PROGRESS"):
            time.sleep(0.05)
        jobs = [c.submit("mock-model", api_name="/generate", **request(i)) for i, c in enumerate(clients[1:], 1)]
        time.sleep(1.0)  # every submission has reached the queue (or been turned away)
        # Cancel is outside the queue (a full queue must not stop it): the page posts it directly,
        # as here, in the running job's own session
        import httpx
        answer = httpx.post(f"{url}gradio_api/run/cancel", json={"data": [], "session_hash": clients[0].session_hash},
                            timeout=30)
        assert answer.status_code == 200, answer.text
        started = time.perf_counter()
        outcomes = []
        for job in [first, *jobs]:
            try:
                job.result(timeout=60)
                outcomes.append("done")
            except Exception as e:  # noqa: BLE001 - the client's error is the outcome under test
                text = str(e).lower()
                outcomes.append("full" if "queue is full" in text else "cancelled" if "cancel" in text else text)
        assert outcomes[0] == "cancelled", outcomes
        assert sorted(outcomes[1:]) == ["done", "done", "full", "full"], outcomes
        assert time.perf_counter() - started < 15  # the cancelled run did not hold the slot for its 5 s
