"""serve's HTTP app: a page to draw or upload a digit and see what the model
reads, with the training curves of the checkpoint's run, and POST /predict
for programs. Starlette on uvicorn; no authentication, so it belongs on a
trusted network (README says so).

    GET  /          the page (page/index.html: a canvas, an upload, the answer, the curves)
    POST /predict   an image (PNG, JPEG, ...) as the body, raw or as a multipart/form-data
                    file -> {"digit" (or "class"), "name", "probabilities", "epoch"}, and
                    with ?input=1 the 28x28 "input" the model saw; read by infer's own
                    preparation, one path for both
    GET  /metrics   the checkpoint's file name, its metrics and interval rows
    GET  /healthz   200 {"status": "ok", "epoch", "dataset", "checkpoint", "waiting",
                    "connections"}: the model loaded, the requests each lane of workers
                    has yet to answer, and the connections open and waiting on clients

One access-log line a request on stdout (AccessLog). The event loop only
moves bytes: the workers (workers.py) read the images and answer them.
"""

import asyncio
import json
import os
import signal
import socket
import sys
import time
import urllib.parse

from mnist_hogwild.core import cpus
from mnist_hogwild.core.loglines import say
from mnist_hogwild.core.processes import STOP_SIGNALS
from mnist_hogwild.serving import bounds
from mnist_hogwild.serving.holder import ModelHolder
from mnist_hogwild.serving.workers import ANSWER, FAILED, LATE, Unavailable, Workers
from mnist_hogwild.training import checkpoint

PAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "page", "index.html")
RELOAD_SECONDS = 1.0  # how often the server looks at the checkpoint (/healthz, the warning)


def serve(path, host, port, max_batch, workers):
    """Serve the checkpoint at PATH until a stop signal: 0, or 1 if the port is taken."""
    import uvicorn  # noqa: PLC0415

    holder = ModelHolder(path, warn=lambda line: say(line, sys.stderr))
    # First, before any thread exists: the workers are forked from this process.
    pool = Workers(holder, workers or max(1, min(4, cpus.usable_cpus())), max_batch)
    try:  # bound here, so that a taken port is one line of ours
        listener = socket.create_server((host, port), reuse_port=False, backlog=1024)
    except OSError as e:
        pool.close()
        say(f"error: cannot listen on {host}:{port}: {e.strerror or e}", sys.stderr)
        return 1
    bounds.raise_descriptor_limit()
    bounds.quiet_logs(lambda line: say(line, sys.stderr))
    say(
        f"serving {path} (epoch {holder.state['epoch']}) at http://{host}:{port}/ "
        "(no authentication: a trusted network only)"
    )
    config = uvicorn.Config(
        make_app(holder, pool),
        log_level="warning",
        http=bounds.GuardedH11,
        limit_concurrency=bounds.LIMIT_CONCURRENCY,
        timeout_keep_alive=5,
        timeout_graceful_shutdown=1,
        h11_max_incomplete_event_size=16384,
    )
    # uvicorn stops gracefully on SIGINT/SIGTERM (docker stop), then raises the
    # signal again for the handler it found: a stop is the end of serving, exit 0.
    for signum in STOP_SIGNALS:
        signal.signal(signum, lambda *_: None)
    try:
        uvicorn.Server(config).run(sockets=[listener])
    finally:
        pool.close()
    return 0


def make_app(holder, pool):
    from contextlib import asynccontextmanager  # noqa: PLC0415

    from starlette.applications import Starlette  # noqa: PLC0415 - only serve needs them
    from starlette.routing import Route  # noqa: PLC0415

    @asynccontextmanager
    async def lifespan(app):
        await pool.start()
        watching = asyncio.get_running_loop().create_task(watch(holder))
        yield
        watching.cancel()

    predict = Predict(pool)
    routes = [Route("/predict", predict, methods=["POST"]), *reading_routes(holder, pool)]
    return AccessLog(Front(predict, Starlette(routes=routes, lifespan=lifespan)))


async def watch(holder):
    """Look at the checkpoint now and then (in a thread: a load is CPU work),
    so that /healthz says what the workers answer with, and a bad file is
    warned about once."""
    from anyio import to_thread  # noqa: PLC0415

    while True:
        await to_thread.run_sync(holder.current)
        await asyncio.sleep(RELOAD_SECONDS)


class Predict:
    """POST /predict, as a bare ASGI app (Starlette's Request and Response
    cost more than the rest of the server's work on a request): the body,
    bounded, to a worker; its answer as it is."""

    def __init__(self, pool):
        self.pool = pool
        self.waiting = 0  # the bytes of the bodies that wait for their answers

    async def __call__(self, scope, receive, send):
        headers = dict(scope["headers"])  # (ASGI's names: lower-case bytes)
        body, problem = await bounds.receive(headers, receive)
        if problem is not None:
            return await reply(send, *refused(*problem))
        if self.waiting + len(body) > bounds.MAX_WAITING:
            held = f"{bounds.MAX_WAITING // 2**20} MB of images"
            bounds.LIMITED.note(f"busy: {held} waiting, answered 503")
            busy = f"Busy: {held} are waiting to be read; try again."
            return await reply(send, *refused(busy, 503))
        self.waiting += len(body)
        try:
            await reply(send, *await self.answer(scope, headers, body))
        finally:
            self.waiting -= len(body)

    async def answer(self, scope, headers, body):
        """(the HTTP status, the JSON payload): a worker's answer, or why none came."""
        deadline = time.monotonic() + bounds.REQUEST_SECONDS
        query = urllib.parse.parse_qs(scope["query_string"].decode("latin-1"))
        shown = query.get("input", [""])[-1] in ("1", "true")
        kind = headers.get(b"content-type", b"").decode("latin-1")
        try:
            async with asyncio.timeout(bounds.REQUEST_SECONDS):
                status, payload = await self.pool.ask(body, kind, shown, deadline)
        except Unavailable as e:
            return refused(sentence(f"{e}; try again"), 503)
        except TimeoutError:
            status, payload = LATE, b""
        if status == ANSWER:
            return 200, payload
        return refused(*reply_refused(status, payload))


async def reply(send, status, payload):
    """A JSON answer: STATUS and PAYLOAD's bytes."""
    length = str(len(payload)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", length)]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


def reply_refused(status, payload):
    """(the message, its status) for a worker's answer that is not one."""
    if status == LATE:
        seconds = f"{bounds.REQUEST_SECONDS:g}"
        return f"Reading the image took over {seconds} s; send a smaller one.", 503
    if status == FAILED:
        return f"The model failed: {payload.decode()}.", 500
    return refusal(payload.decode())


def refused(message, status=400):
    """(STATUS, the JSON body saying MESSAGE)."""
    return status, json.dumps({"error": message}).encode()


def refusal(error):
    """An InputError's text as a sentence, and its status (413 for sizes)."""
    reason = error.removeprefix("the image: ")
    return sentence(reason), 413 if reason.startswith("too large") else 400


def sentence(text):
    return text[0].upper() + text[1:] + "."


def reading_routes(model, pool):
    """GET /, /metrics and /healthz: the page, the run's curves, the model's state."""
    from anyio import to_thread  # noqa: PLC0415
    from starlette.responses import FileResponse, JSONResponse, Response  # noqa: PLC0415
    from starlette.routing import Route  # noqa: PLC0415

    async def page(request):
        return FileResponse(PAGE, media_type="text/html")

    async def rows(request):
        # (read and written as JSON in a thread: a long run's file is CPU work)
        return Response(await to_thread.run_sync(curves, model.path), media_type="application/json")

    async def health(request):
        state = model.state  # (the one serving now: a reload replaces it whole)
        name = os.path.basename(model.path)
        said = {"status": "ok", "epoch": state["epoch"], "dataset": model.dataset}
        said |= {"checkpoint": name, "waiting": pool.waiting()}
        return JSONResponse({**said, "connections": bounds.GuardedH11.census()})

    return [Route("/", page), Route("/metrics", rows), Route("/healthz", health)]


class Front:
    """POST /predict straight to PREDICT, past the framework's middleware and
    routing (its Route is kept there too: other methods get its 405); the
    rest to APP."""

    def __init__(self, predict, app):
        self.predict, self.app = predict, app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] == "/predict":
            return await self.predict(scope, receive, send)
        return await self.app(scope, receive, send)


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


def curves(path):
    """/metrics' answer: the checkpoint's file name (not the server's folders),
    its metrics rows and its interval rows."""
    rows, intervals = checkpoint.read_metrics(path), checkpoint.read_intervals(path)
    answer = {"checkpoint": os.path.basename(path), "metrics": rows, "intervals": intervals}
    return json.dumps(answer).encode()
