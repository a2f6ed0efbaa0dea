"""The `serve` command: a page to draw or upload a digit and see what the
model reads, with the training curves of the checkpoint's run, and POST
/predict for programs. Starlette on uvicorn; no authentication, so it
belongs on a trusted network (README says so).

    GET  /          the page (page/index.html: a canvas, an upload, the answer, the curves)
    POST /predict   an image (PNG, JPEG, ...) as the body, raw or as a multipart/form-data
                    file -> {"digit" (or "class"), "name", "probabilities", "epoch"}, and
                    with ?input=1 the 28x28 "input" the model saw; read by infer's own
                    preparation, one path for both
    GET  /metrics   the checkpoint's file name, its metrics and interval rows
    GET  /healthz   200 {"status": "ok", "epoch", "dataset", "checkpoint"}: the model loaded

One access-log line a request on stdout (AccessLog).

The event loop only moves bytes. Decoding and preparing an image run in
image-reader processes (decoders.py: forked at start, before any thread,
each sent one request's bytes over a socket pair; at most MAX_WAITING
requests read or wait: 503 beyond); the predictions of requests that arrive
together are one forward pass, in the Batcher's thread of this process. Each request has a size (MAX_BODY, and the decoded
size infer.DECODE_BUDGET), a time (BODY_SECONDS to arrive, REQUEST_SECONDS
in all: 408 and 503) and so a memory bound; httpguard.py bounds connections.
The model is loaded again when the checkpoint file changes (a run training
beside it): saves are atomic, so a reload never sees half a file.
"""

import asyncio
import os
import queue
import signal
import socket
import sys
import threading
import time

from mnist_hogwild.commands import httpguard
from mnist_hogwild.commands.decoders import Decoders, Unavailable
from mnist_hogwild.commands.infer import class_probabilities
from mnist_hogwild.core import cpus
from mnist_hogwild.core.errors import CheckpointError, InputError
from mnist_hogwild.core.loglines import say
from mnist_hogwild.core.tables import DATASETS
from mnist_hogwild.core.processes import STOP_SIGNALS
from mnist_hogwild.training import checkpoint

MAX_BODY = 4 * 2**20  # bytes: a drawing is a few KB, a phone photo a few MB
DRAIN = 4 * MAX_BODY  # a body over MAX_BODY is read on (and dropped) up to this
BODY_SECONDS = 10.0  # for a request's body to arrive
REQUEST_SECONDS = 10.0  # for its answer, in all
MAX_WAITING = 64  # requests decoding or waiting to; beyond, 503 at once
# uvicorn's limit counts open connections too, idle or slow ones included: it
# is only a backstop above httpguard's bound on connections (which closes the
# slowest instead of refusing a working client); MAX_WAITING bounds the work.
LIMIT_CONCURRENCY = 2 * httpguard.MAX_CONNECTIONS
PAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "page", "index.html")


class Model:
    """The checkpoint's model, loaded again whenever its file changes."""

    def __init__(self, path):
        self.path, self.lock = path, threading.Lock()
        self.stamp, self.model, self.state, self.refused = None, None, None, None
        self.current()  # a bad checkpoint is an error at start, not at the first request

    @property
    def dataset(self):
        return self.state["config"].get("dataset", "mnist")

    def current(self):
        """(model, state) as the file now holds them. A file that does not load
        is warned about once (until it changes again); the last model serves on."""
        with self.lock:
            try:
                info = os.stat(self.path)
            except OSError as e:
                if self.model is None:
                    raise CheckpointError(f"no checkpoint at {self.path} ({e.strerror})") from None
                return self.model, self.state  # (moved away meanwhile: keep serving)
            stamp = (info.st_mtime_ns, info.st_size, info.st_ino)
            if stamp not in (self.stamp, self.refused):
                try:
                    self.model, self.state = checkpoint.load_model(self.path)
                    self.stamp = stamp
                except CheckpointError as e:
                    if self.model is None:
                        raise
                    self.refused = stamp
                    say(f"warning: {e}; still serving the model of epoch {self.state['epoch']}")
            return self.model, self.state


class Batcher:
    """Predictions in one thread: every request waiting when it is free is
    one forward pass (of at most MAX_BATCH: serve's --max-batch), so that
    concurrent requests share the model's fixed costs; the event loop only
    awaits the answers."""

    def __init__(self, model, max_batch):
        self.model, self.max_batch = model, max_batch
        self.requests = queue.SimpleQueue()
        self.thread = threading.Thread(target=self.run, name="batcher", daemon=True)
        self.thread.start()

    async def predict(self, image):
        """(probabilities [10], state of the model that answered) for IMAGE, the
        784 bytes of a 28x28 input."""
        loop = asyncio.get_running_loop()
        answer = loop.create_future()
        self.requests.put((image, answer, loop))
        return await answer

    def run(self):
        import torch  # noqa: PLC0415

        while True:
            batch = [self.requests.get()]
            while len(batch) < self.max_batch:
                try:
                    batch.append(self.requests.get_nowait())
                except queue.Empty:
                    break
            try:
                model, state = self.model.current()
                dataset = state["config"].get("dataset", "mnist")
                pixels = bytearray(b"".join(image for image, _, _ in batch))
                images = torch.frombuffer(pixels, dtype=torch.uint8).view(len(batch), 28, 28)
                answers = [(p, state) for p in class_probabilities(model, images, dataset)]
            except Exception as e:  # noqa: BLE001 - every waiting request hears of it
                answers = [e] * len(batch)
            for (_, future, loop), answer in zip(batch, answers, strict=True):
                loop.call_soon_threadsafe(settle, future, answer)


def settle(future, answer):
    if future.done():
        return  # (the request gave up: its time budget ran out)
    if isinstance(answer, Exception):
        future.set_exception(answer)
    else:
        future.set_result(answer)


def refusal(error):
    """An InputError as a sentence, and its status (413 for sizes)."""
    reason = str(error).removeprefix("the image: ")
    status = 413 if reason.startswith("too large") else 400
    return reason[0].upper() + reason[1:] + ".", status


def make_app(model, batcher, decoders):
    from anyio import fail_after  # noqa: PLC0415
    from starlette.applications import Starlette  # noqa: PLC0415 - only serve needs them
    from starlette.responses import JSONResponse  # noqa: PLC0415
    from starlette.routing import Route  # noqa: PLC0415

    waiting = [0]

    def refuse(message, status=400):
        return JSONResponse({"error": message}, status_code=status)

    async def predict(request):
        body, problem = await receive(request)
        if problem is not None:
            return refuse(*problem)
        if waiting[0] >= MAX_WAITING:
            httpguard.LIMITED.note(f"busy: {MAX_WAITING} requests waiting, answered 503")
            return refuse(f"Busy: {MAX_WAITING} images are being read; try again.", 503)
        waiting[0] += 1
        try:
            with fail_after(REQUEST_SECONDS):
                image = await decoders.decode(
                    body, request.headers.get("content-type"), model.dataset
                )
                probabilities, state = await batcher.predict(image)
                shown = request.query_params.get("input") in ("1", "true")
        except InputError as e:
            return refuse(*refusal(e))
        except Unavailable as e:
            return refuse(f"{e}.", 503)
        except TimeoutError:
            return refuse(
                f"Reading the image took over {REQUEST_SECONDS:g} s; send a smaller one.", 503
            )
        finally:
            waiting[0] -= 1
        return JSONResponse(answer(probabilities, image, state, shown))

    routes = [Route("/predict", predict, methods=["POST"]), *reading_routes(model)]
    return AccessLog(Starlette(routes=routes))


def reading_routes(model):
    """GET /, /metrics and /healthz: the page, the run's curves, the model's state."""
    from anyio import to_thread  # noqa: PLC0415
    from starlette.responses import FileResponse, JSONResponse  # noqa: PLC0415
    from starlette.routing import Route  # noqa: PLC0415

    async def page(request):
        return FileResponse(PAGE, media_type="text/html")

    async def rows(request):
        rows, intervals = await to_thread.run_sync(read_curves, model.path)
        name = os.path.basename(model.path)  # (not the server's folders)
        return JSONResponse({"checkpoint": name, "metrics": rows, "intervals": intervals})

    async def health(request):
        state = model.state  # (the one serving now: a reload replaces it whole)
        name = os.path.basename(model.path)
        said = {"status": "ok", "epoch": state["epoch"], "dataset": model.dataset}
        return JSONResponse({**said, "checkpoint": name})

    return [Route("/", page), Route("/metrics", rows), Route("/healthz", health)]


async def receive(request):
    """(the request's body, None), or (None, (what is wrong, its status)):
    over MAX_BODY (413), or slower than BODY_SECONDS to arrive (408). A body
    over the limit is read on (not kept) up to DRAIN bytes, so that the
    client, still sending, gets the 413 rather than a reset connection."""
    from anyio import fail_after  # noqa: PLC0415

    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > DRAIN:
        return None, too_large()  # (then closed: not worth reading)
    body, size = bytearray(), 0
    try:
        with fail_after(BODY_SECONDS):
            async for chunk in request.stream():
                size += len(chunk)
                if size > DRAIN:
                    break
                if size <= MAX_BODY:
                    body += chunk
    except TimeoutError:
        return None, (f"The body took over {BODY_SECONDS:g} s to arrive.", 408)
    return (bytes(body), None) if size <= MAX_BODY else (None, too_large())


def too_large():
    return f"The body is over {MAX_BODY // 2**20} MB, the most this accepts.", 413


def answer(probabilities, image, state, with_input=False):
    """/predict's answer: the class (a "digit" for a data set of digits) and its
    name, the probabilities, the model's epoch; WITH_INPUT, the 28x28 the model
    saw (784 bytes, light on dark: the page shows it)."""
    kind = DATASETS[state["config"].get("dataset", "mnist")]
    best = int(probabilities.argmax())
    out = {kind.class_word: best, "name": kind.classes[best]}
    out |= {"probabilities": [round(float(p), 6) for p in probabilities], "epoch": state["epoch"]}
    return out | ({"input": list(image)} if with_input else {})


class AccessLog:
    """One line a request on stdout, when its answer has gone: the client,
    the request line, the status, the bytes sent and the milliseconds (the
    common log format's fields, as uvicorn's own access log, which
    log_level warning turns off)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, sent = time.perf_counter(), {"status": 0, "bytes": 0}

        async def sending(message):
            if message["type"] == "http.response.start":
                sent["status"] = message["status"]
            elif message["type"] == "http.response.body":
                sent["bytes"] += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            host, port = scope.get("client") or ("-", 0)
            path = scope["path"] + (
                "?" + scope["query_string"].decode("latin-1") if scope["query_string"] else ""
            )
            ms = 1000 * (time.perf_counter() - started)
            say(
                f'{host}:{port} "{scope["method"]} {path} HTTP/{scope["http_version"]}" '
                f'{sent["status"]} {sent["bytes"]} {ms:.1f}ms'
            )


def read_curves(path):
    return checkpoint.read_metrics(path), checkpoint.read_intervals(path)


def run_command(args):
    import torch  # noqa: PLC0415
    import uvicorn  # noqa: PLC0415

    # One torch thread: the readers and the batches are the parallelism
    # (intra-op threads cost a small image far more in hand-offs than they give).
    torch.set_num_threads(1)
    model = Model(args.checkpoint)
    # First, before any thread exists: the readers are forked from this process.
    decoders = Decoders(max(1, min(4, cpus.usable_cpus())))
    app = make_app(model, Batcher(model, args.max_batch), decoders)
    try:  # bound here, so that a taken port is one line of ours
        listener = socket.create_server((args.host, args.port), reuse_port=False, backlog=1024)
    except OSError as e:
        say(f"error: cannot listen on {args.host}:{args.port}: {e.strerror or e}", sys.stderr)
        return 1
    httpguard.raise_descriptor_limit()
    httpguard.quiet_logs(lambda line: say(line, sys.stderr))
    say(
        f"serving {args.checkpoint} (epoch {model.state['epoch']}) at "
        f"http://{args.host}:{args.port}/ (no authentication: a trusted network only)"
    )
    config = uvicorn.Config(
        app,
        log_level="warning",
        http=httpguard.GuardedH11,
        limit_concurrency=LIMIT_CONCURRENCY,
        timeout_keep_alive=5,
        timeout_graceful_shutdown=1,
        h11_max_incomplete_event_size=16384,
    )
    server = uvicorn.Server(config)
    # uvicorn stops gracefully on SIGINT/SIGTERM (docker stop), then raises the
    # signal again for the handler it found: a stop is the end of serving, exit 0.
    for signum in STOP_SIGNALS:
        signal.signal(signum, lambda *_: None)
    try:
        server.run(sockets=[listener])
    finally:
        decoders.close()
    return 0
