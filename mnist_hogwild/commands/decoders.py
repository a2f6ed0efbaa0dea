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

A worker that dies (the kernel's OOM killer, a kill) is replaced by one that
the spawner forks: a process forked first, before any thread exists, that
only forks workers and hands each one's socket back (SCM_RIGHTS). A worker
forked from the server later would copy a process with threads (the batcher,
the loop, torch's), whose locks it could inherit held.
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
from mnist_hogwild.core import processes
from mnist_hogwild.core.errors import InputError

LARGE_WAIT = 10.0  # seconds a worker waits for its turn at a large image
SPAWN_SECONDS = 10.0  # the most the spawner may take to fork a worker


class Unavailable(Exception):
    """No worker could read the image (they died, or it is too slow)."""


class Decoders:
    """COUNT workers; decode() hands a request to an idle one."""

    def __init__(self, count):
        import multiprocessing  # noqa: PLC0415

        self.large = multiprocessing.get_context("fork").Lock()
        self.spawner = Spawner(self.large)
        self.workers = []  # (filled one by one: each fork closes the ones before in its child)
        for _ in range(count):
            self.workers.append(self.fork())
        self.idle = None  # an asyncio.Queue of (pid, reader, writer), made on the loop
        self.replacing = None  # an asyncio.Lock: one replacement at a time

    def fork(self):
        mine, theirs = socket.socketpair()
        pid = os.fork()
        if pid == 0:  # the worker: it never returns into the server's code
            for sock in [mine, self.spawner.control, *(w[1] for w in self.workers)]:
                sock.close()  # (the server's ends: its death is their end)
            run_worker(theirs, self.large)
        theirs.close()
        return pid, mine

    async def decode(self, body, content_type, dataset):
        """The 28x28 input (784 bytes) read from a request's BODY by a worker;
        InputError for what is not a readable image, Unavailable if none can."""
        if self.idle is None:
            self.idle, self.replacing = asyncio.Queue(), asyncio.Lock()
            for pid, sock in self.workers:
                self.idle.put_nowait(await connected(pid, sock))
        worker = await self.alive_idle()
        try:
            status, payload = await exchange(worker, body, content_type, dataset)
        except asyncio.CancelledError:  # (the request's time ran out) its answer still comes
            asyncio.get_running_loop().create_task(self.drain(worker))
            raise
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            await self.lost(worker)
            raise Unavailable("the image reader died reading it") from None
        self.idle.put_nowait(worker)
        if status:
            raise InputError(payload.decode())
        return payload

    async def alive_idle(self):
        """An idle worker (one found dead while idle is replaced on the way)."""
        while self.workers:
            worker = await self.idle.get()
            if not worker[1].at_eof():
                return worker
            await self.lost(worker)
        raise Unavailable("every image reader died and none could be started")

    async def drain(self, worker):
        """Wait for a given-up request's answer, then let the worker take others."""
        try:
            await asyncio.wait_for(answer_of(worker[1]), timeout=60)
            self.idle.put_nowait(worker)
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError, OSError):
            os.kill(worker[0], signal.SIGKILL)
            await self.lost(worker)

    async def lost(self, worker):
        """WORKER died: a note, and a new worker from the spawner in its place."""
        pid = worker[0]
        worker[2].close()
        self.workers = [w for w in self.workers if w[0] != pid]
        async with self.replacing:  # (the spawner answers one request at a time)
            new = await asyncio.get_running_loop().run_in_executor(None, self.spawner.fork)
        if new is not None:
            self.workers.append(new)
            self.idle.put_nowait(await connected(*new))
        then = f"replaced by {new[0]}" if new else f"none to replace it, {len(self.workers)} left"
        httpguard.LIMITED.note(f"image readers: {pid} ended{ended_by(pid)}, {then}")

    def close(self):
        self.spawner.stop()
        for pid, _ in self.workers:
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass  # (a spawned worker is the spawner's child: the kernel reaps it)


class Spawner:
    """A process forked before any thread exists, whose only work is forking
    workers: fork() asks it for one, and gets its pid and the server's end of
    its socket pair (None once the spawner is gone)."""

    def __init__(self, large):
        self.control, theirs = socket.socketpair()
        self.pid = os.fork()
        if self.pid == 0:
            self.control.close()
            processes.name_process("reader-spawner")
            signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # its workers: reaped by the kernel
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            os._exit(spawn_on_request(theirs, large))
        theirs.close()
        self.control.settimeout(SPAWN_SECONDS)

    def fork(self):
        if self.control is None:
            return None
        try:
            self.control.sendall(b"+")
            message, fds, _, _ = socket.recv_fds(self.control, 8, 1)
            if len(message) == 8 and len(fds) == 1:
                return int.from_bytes(message, "big"), socket.socket(fileno=fds[0])
        except OSError:
            pass  # (it died, hangs, or could not fork: not asked again)
        self.stop()
        return None

    def stop(self):
        """End the spawner; fork() answers None from now on."""
        if self.control is None:
            return
        self.control.close()
        self.control = None
        try:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


def spawn_on_request(control, large):
    """The spawner's life: a worker per byte received, until the server goes."""
    try:
        while control.recv(1):
            mine, theirs = socket.socketpair()
            pid = os.fork()
            if pid == 0:
                control.close()
                mine.close()
                run_worker(theirs, large)
            theirs.close()
            socket.send_fds(control, [pid.to_bytes(8, "big")], [mine.fileno()])
            mine.close()
    except BaseException:  # noqa: BLE001 - the spawner ends here, whatever happens
        return 1
    return 0


def run_worker(sock, large):
    """A worker's process, from its fork to its exit: never returns."""
    code = 0
    try:
        processes.name_process("image-reader")
        serve_requests(sock, large)
    except BaseException:  # noqa: BLE001 - a worker ends here, whatever happens
        code = 1
    os._exit(code)


def ended_by(pid):
    """' by signal N' or ' by an exit' for a child of this process; '' for the
    spawner's (the kernel reaped it)."""
    try:
        _, status = os.waitpid(pid, 0)
    except ChildProcessError:
        return ""
    return f" by signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status) else " by an exit"


async def connected(pid, sock):
    return (pid, *await asyncio.open_connection(sock=sock))


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


def nonempty(image):
    if not image:
        raise InputError("the image: the body is empty: send the image's bytes, or a form's file")
    return image


def image_bytes(body, content_type):
    """The image in a request's BODY: the first file of a multipart form, else
    the body itself (its bytes say what it is, whatever CONTENT_TYPE claims)."""
    header = email.message.Message()
    header["content-type"] = content_type or "application/octet-stream"
    if header.get_content_type() != "multipart/form-data":  # (lower-cased by email)
        return nonempty(body)
    boundary = header.get_param("boundary")
    if not boundary:
        raise InputError("the image: a multipart/form-data body without its boundary")
    for part in body.split(b"--" + str(boundary).encode("latin-1"))[1:]:
        if part.startswith(b"--"):
            break  # the closing delimiter
        head, found, payload = part.partition(b"\r\n\r\n")
        fields = head.decode("latin-1").lower()
        if found and ("filename=" in fields or "content-type: image/" in fields):
            return nonempty(payload.removesuffix(b"\r\n"))
    raise InputError(
        "the image: the form has no file in it: send the image as a file (curl -F file=@7.png)"
    )
