"""serve's image readers: worker processes, forked when serve starts (before
any thread exists, so they share the loaded modules' memory), each reading
one request's image at a time through a socket pair.

Why processes: reading an image is many small torch steps, each of which
lets go of the interpreter lock and must get it back; in a thread beside the
event loop every step waited on the loop (measured: docs/performance.md).
Why not multiprocessing.Pool: its three helper threads in the server fought
the event loop for the same lock. Here the event loop writes a request and
awaits the answer on a socket, as it does for any client: no thread.

The wire (big-endian): request = header length (4), body length (4), header
(JSON [content type, data set]), body; answer = status (1: 0 an image, 1 an
error), length (4), then 784 bytes (the 28x28 input) or the error's text.
An image over infer.LARGE_DECODE is decoded by one worker at a time (LARGE),
so that the memory stays bounded however many arrive together.
"""

import asyncio
import email.message
import io
import json
import os
import signal
import socket
import struct

from mnist_hogwild.commands import httpguard
from mnist_hogwild.commands.infer import prepare_image
from mnist_hogwild.core.errors import InputError

LARGE_WAIT = 10.0  # seconds a worker waits for its turn at a large image


class Unavailable(Exception):
    """No worker could read the image (they died, or it is too slow)."""


class Decoders:
    """PROCESSES workers; decode() hands a request to an idle one."""

    def __init__(self, processes):
        import multiprocessing  # noqa: PLC0415

        self.large = multiprocessing.get_context("fork").Lock()
        self.workers = [self.fork() for _ in range(processes)]
        self.idle = None  # an asyncio.Queue of (pid, reader, writer), made on the loop

    def fork(self):
        mine, theirs = socket.socketpair()
        pid = os.fork()
        if pid == 0:  # the worker: it never returns into the server's code
            mine.close()
            code = 0
            try:
                serve_requests(theirs, self.large)
            except BaseException:  # noqa: BLE001 - a worker ends here, whatever happens
                code = 1
            os._exit(code)
        theirs.close()
        return pid, mine

    async def decode(self, body, content_type, dataset):
        """The 28x28 input (784 bytes) read from a request's BODY by a worker;
        InputError for what is not a readable image, Unavailable if none can."""
        if self.idle is None:
            self.idle = asyncio.Queue()
            for pid, sock in self.workers:
                self.idle.put_nowait((pid, *await asyncio.open_connection(sock=sock)))
        if not self.workers:
            raise Unavailable("every image reader died; restart serve")
        worker = await self.idle.get()
        try:
            status, payload = await exchange(worker, body, content_type, dataset)
        except asyncio.CancelledError:  # (the request's time ran out) its answer still comes
            asyncio.get_running_loop().create_task(self.drain(worker))
            raise
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            self.lost(worker)
            raise Unavailable("the image reader died reading it") from None
        self.idle.put_nowait(worker)
        if status:
            raise InputError(payload.decode())
        return payload

    async def drain(self, worker):
        """Wait for a given-up request's answer, then let the worker take others."""
        try:
            await asyncio.wait_for(answer_of(worker[1]), timeout=60)
            self.idle.put_nowait(worker)
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError, OSError):
            os.kill(worker[0], signal.SIGKILL)
            self.lost(worker)

    def lost(self, worker):
        pid = worker[0]
        self.workers = [w for w in self.workers if w[0] != pid]
        try:
            _, status = os.waitpid(pid, 0)
            how = f"signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status) else "an exit"
        except ChildProcessError:
            how = "an unknown cause"
        httpguard.LIMITED.note(f"image reader {pid} ended by {how}; {len(self.workers)} left")

    def close(self):
        for pid, _ in self.workers:
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass


async def exchange(worker, body, content_type, dataset):
    _, reader, writer = worker
    header = json.dumps([content_type or "", dataset]).encode()
    writer.write(struct.pack(">II", len(header), len(body)) + header + body)
    await writer.drain()
    return await answer_of(reader)


async def answer_of(reader):
    status, length = struct.unpack(">BI", await reader.readexactly(5))
    return status, await reader.readexactly(length)


def serve_requests(sock, large):
    """A worker's life: one request at a time until the server goes away."""
    import torch  # noqa: PLC0415

    torch.set_num_threads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # (Ctrl-C and docker stop are the server's)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    stream = sock.makefile("rwb")
    while True:
        head = stream.read(8)
        if len(head) < 8:
            return  # the server is gone
        header_length, body_length = struct.unpack(">II", head)
        content_type, dataset = json.loads(stream.read(header_length))
        body = stream.read(body_length)
        try:
            status, payload = 0, read_request(body, content_type, dataset, LargeTurn(large))
        except InputError as e:
            status, payload = 1, str(e).encode()
        except Exception as e:  # noqa: BLE001 - an answer, never a dead worker
            status, payload = 1, f"the image: not a readable image ({type(e).__name__})".encode()
        stream.write(struct.pack(">BI", status, len(payload)) + payload)
        stream.flush()


class LargeTurn:
    """The turn at decoding a large image (a lock shared by the workers)."""

    def __init__(self, lock):
        self.lock = lock

    def __call__(self):
        return self

    def __enter__(self):
        if not self.lock.acquire(timeout=LARGE_WAIT):
            raise InputError("the image: busy reading other large images; try again")
        return self

    def __exit__(self, *exc):
        self.lock.release()
        return False


def read_request(body, content_type, dataset, large):
    """The 784 bytes of the 28x28 input the model reads from a request's BODY."""
    source = io.BytesIO(image_bytes(body, content_type))
    return prepare_image("the image", dataset, source, large=large).numpy().tobytes()


def image_bytes(body, content_type):
    """The image in a request's BODY: the first file of a multipart form, else
    the body itself (its bytes say what it is, whatever CONTENT_TYPE claims)."""
    header = email.message.Message()
    header["content-type"] = content_type or "application/octet-stream"
    if header.get_content_type() != "multipart/form-data":  # (lower-cased by email)
        return body
    boundary = header.get_param("boundary")
    if not boundary:
        raise InputError("the image: a multipart/form-data body without its boundary")
    for part in body.split(b"--" + str(boundary).encode("latin-1"))[1:]:
        if part.startswith(b"--"):
            break  # the closing delimiter
        head, found, payload = part.partition(b"\r\n\r\n")
        fields = head.decode("latin-1").lower()
        if found and ("filename=" in fields or "content-type: image/" in fields):
            return payload.removesuffix(b"\r\n")
    raise InputError(
        "the image: the form has no file in it: send the image as a file (curl -F file=@7.png)"
    )
