"""The servers scripts/serve_load.py sets side by side: the web framework's
own ceiling (Starlette on uvicorn answering a constant JSON after reading
the body), a naive server (PIL decode, normalise and the same Net's forward
pass in the async handler), and `main.py serve` as this checkout or any
commit has it (a git worktree). Each starts on a free port and stops with
its with block.

    python tools/servers.py ceiling|naive CHECKPOINT PORT   # one reference server
"""

import io
import os
import shlex
import socket
import subprocess
import sys
import tempfile
import time

from harness import REPO

CONSTANT = b'{"digit": 7, "name": "7", "probabilities": [0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1]}'


def reference_app(kind, checkpoint):
    """The ceiling's or the naive server's Starlette app."""
    from starlette.applications import Starlette  # noqa: PLC0415
    from starlette.responses import JSONResponse, Response  # noqa: PLC0415
    from starlette.routing import Route  # noqa: PLC0415

    if kind == "ceiling":

        async def predict(request):
            await request.body()
            return Response(CONSTANT, media_type="application/json")

    else:
        import torch  # noqa: PLC0415
        from PIL import Image  # noqa: PLC0415

        sys.path.insert(0, REPO)
        from mnist_hogwild.training import checkpoint as ck  # noqa: PLC0415

        model, _ = ck.load_model(checkpoint)

        async def predict(request):
            image = Image.open(io.BytesIO(await request.body())).convert("L").resize((28, 28))
            x = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).float()
            x = ((255 - x) / 255 - 0.1307) / 0.3081
            with torch.no_grad():
                p = model(x.view(1, 1, 28, 28)).exp()[0]
            return JSONResponse({"digit": int(p.argmax()), "probabilities": p.tolist()})

    return Starlette(routes=[Route("/predict", predict, methods=["POST"])])


def run_reference(kind, checkpoint, port):
    import uvicorn  # noqa: PLC0415

    app = reference_app(kind, checkpoint)
    print(f"serving {kind} on {port}", flush=True)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One server of the comparison, from start to stop: (port, pid)."""

    def __init__(self, spec, checkpoint):
        self.spec, self.checkpoint = spec, checkpoint

    def command(self, port):
        name, *flags = shlex.split(self.spec)
        if name in ("ceiling", "naive"):
            return [sys.executable, os.path.abspath(__file__), name, self.checkpoint, str(port)]
        tree = worktree(name.partition("@")[2]) if "@" in name else REPO
        main = os.path.join(tree, "main.py")
        serve = [sys.executable, main, "serve", "--checkpoint", self.checkpoint]
        return [*serve, *flags, "--port", str(port)]

    def __enter__(self):
        port = free_port()
        # Its output (serve's access log: a line a request) to a file, not a
        # pipe this process drains: draining it would cost the load's own
        # process a wake-up a request, and the reference servers log nothing.
        self.log = tempfile.TemporaryFile("w+")
        self.proc = subprocess.Popen(self.command(port), stdout=self.log, text=True)
        line = self.first_line()  # "serving ..." once it listens
        if not line.startswith("serving"):
            self.__exit__()
            sys.exit(f"{self.spec} did not start: {line}")
        wait_for_port(port)
        return port, self.proc.pid

    def first_line(self):
        while self.proc.poll() is None:
            self.log.seek(0)
            line = self.log.readline()
            if line.endswith("\n"):
                return line
            time.sleep(0.05)
        return f"exited {self.proc.returncode}"

    def __exit__(self, *exc):
        self.proc.terminate()
        self.proc.wait()
        self.log.close()


def wait_for_port(port):
    for _ in range(600):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)


WORKTREES = {}


def worktree(commit):
    """A checkout of COMMIT beside this one (made once; removed at exit)."""
    if commit not in WORKTREES:
        path = tempfile.mkdtemp(prefix=f"serve-{commit}-")
        subprocess.run(
            ["git", "-C", REPO, "worktree", "add", "--detach", path, commit],
            check=True,
            capture_output=True,
        )
        WORKTREES[commit] = path
    return WORKTREES[commit]


if __name__ == "__main__":
    run_reference(sys.argv[1], sys.argv[2], int(sys.argv[3]))
