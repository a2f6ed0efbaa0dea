"""The `serve` command: a page to draw a digit and see what the model reads,
with the training curves of the checkpoint's run, and POST /predict for
programs. Starlette on uvicorn; no authentication, so it belongs on a
trusted network (README says so).

    GET  /          the page (page/index.html: a canvas, its answer, the curves)
    POST /predict   an image (PNG, JPEG, ...) as the body -> {"digit", "probabilities",
                    "input"}: read by infer's own preparation, one path for both
    GET  /metrics   the checkpoint's file name, its metrics rows and interval rows
                    (the page redraws its curves from them)

The model is loaded again when the checkpoint file changes (a run training
beside it): saves are atomic, so a reload never sees half a file.
"""

import io
import os
import signal
import socket
import sys
import threading

from mnist_hogwild.commands.infer import class_probabilities, prepare_image
from mnist_hogwild.core.errors import CheckpointError, InputError
from mnist_hogwild.core.loglines import say
from mnist_hogwild.core.processes import STOP_SIGNALS
from mnist_hogwild.training import checkpoint

MAX_BODY = 4 * 2**20  # bytes: a drawing is a few KB, a phone photo a few MB
PAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "page", "index.html")


class Model:
    """The checkpoint's model, loaded again whenever its file changes."""

    def __init__(self, path):
        self.path, self.lock = path, threading.Lock()
        self.stamp, self.model, self.state = None, None, None
        self.current()  # a bad checkpoint is an error at start, not at the first request

    def current(self):
        """(model, state) as the file now holds them."""
        with self.lock:
            try:
                info = os.stat(self.path)
            except OSError as e:
                if self.model is None:
                    raise CheckpointError(f"no checkpoint at {self.path} ({e.strerror})") from None
                return self.model, self.state  # (moved away meanwhile: keep serving)
            stamp = (info.st_mtime_ns, info.st_size, info.st_ino)
            if stamp != self.stamp:
                try:
                    self.model, self.state = checkpoint.load_model(self.path)
                except CheckpointError as e:
                    if self.model is None:
                        raise
                    say(f"warning: {e}; still serving the model of epoch {self.state['epoch']}")
                    return self.model, self.state  # (read again at the next request)
                self.stamp = stamp
            return self.model, self.state


def make_app(model):
    from starlette.applications import Starlette  # noqa: PLC0415 - only serve needs them
    from starlette.responses import FileResponse, JSONResponse  # noqa: PLC0415
    from starlette.routing import Route  # noqa: PLC0415

    def refuse(message):
        return JSONResponse({"error": message}, status_code=400)

    async def predict(request):
        kind = request.headers.get("content-type", "")
        if not kind.startswith("image/"):
            return refuse(f"send an image (Content-Type image/png, image/jpeg, ...), not {kind!r}")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY:
                return refuse(f"the image is over {MAX_BODY // 2**20} MB, the most this accepts")
        current, state = model.current()
        dataset = state["config"].get("dataset", "mnist")
        try:
            image = prepare_image("the image", dataset, io.BytesIO(bytes(body)))
        except InputError as e:
            reason = str(e).removeprefix("the image: ")
            return refuse(reason[0].upper() + reason[1:] + ".")
        probabilities = class_probabilities(current, image.unsqueeze(0), dataset)[0]
        return JSONResponse(
            {
                "digit": int(probabilities.argmax()),
                "probabilities": [round(float(p), 6) for p in probabilities],
                "input": image.flatten().tolist(),  # the 28x28 the model saw, light on dark
                "epoch": state["epoch"],
            }
        )

    async def rows(request):
        return JSONResponse(
            {
                "checkpoint": os.path.basename(model.path),  # (not the server's folders)
                "metrics": checkpoint.read_metrics(model.path),
                "intervals": checkpoint.read_intervals(model.path),
            }
        )

    async def page(request):
        return FileResponse(PAGE, media_type="text/html")

    routes = [Route("/", page), Route("/predict", predict, methods=["POST"])]
    return Starlette(routes=routes + [Route("/metrics", rows)])


def run_command(args):
    import uvicorn  # noqa: PLC0415

    model = Model(args.checkpoint)
    app = make_app(model)
    try:  # bound here, so that a taken port is one line of ours
        listener = socket.create_server((args.host, args.port), reuse_port=False)
    except OSError as e:
        say(f"error: cannot listen on {args.host}:{args.port}: {e.strerror or e}", sys.stderr)
        return 1
    say(
        f"serving {args.checkpoint} (epoch {model.state['epoch']}) at "
        f"http://{args.host}:{args.port}/ (no authentication: a trusted network only)"
    )
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    # uvicorn stops gracefully on SIGINT/SIGTERM (docker stop), then raises the
    # signal again for the handler it found: a stop is the end of serving, exit 0.
    for signum in STOP_SIGNALS:
        signal.signal(signum, lambda *_: None)
    server.run(sockets=[listener])
    return 0
