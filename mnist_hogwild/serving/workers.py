"""serve's workers: processes that read a request's image and answer it with
their own copy of the model, and the server's side of them.

The wire, over one socket pair a worker (big-endian): a request is header
length (4), body length (4), the header (JSON: the content type, whether the
input is wanted, and the deadline on the monotonic clock, which every process
of the machine shares), then the body. An answer is status (1), length (4),
then the payload: the JSON answer, or an error's text. Answers come back in
the order of the requests, so the server needs no request ids.

A worker that dies (the kernel's OOM killer, a kill) is replaced by one that
the spawner forks: a process forked before any thread exists, whose only work
is forking workers and handing each one's socket back (SCM_RIGHTS). A worker
forked from the server later would copy a process with threads, whose locks
it could inherit held.
"""

import asyncio
import collections
import contextlib
import io
import json
import math
import os
import signal
import socket
import struct
import time

from mnist_hogwild.core import processes
from mnist_hogwild.core.errors import InputError
from mnist_hogwild.serving import bounds
from mnist_hogwild.serving.holder import answer, dataset_of, quiet
from mnist_hogwild.serving.images import class_probabilities, prepare_image, request_image

ANSWER, REFUSED, LARGE, LATE, FAILED = range(5)  # an answer's status
SMALL_LANE, LARGE_LANE = b"s", b"L"
SPAWN_SECONDS = 10.0  # the most the spawner may take to fork a worker
STUCK_SECONDS = 60.0  # a worker that owes an answer this long after its request gave up is killed
GATHER = 2**20  # bytes a worker reads ahead for a batch (the kernel's buffer holds the rest)


class Unavailable(Exception):
    """No worker could answer (they died, or none could be started)."""


class Large(Exception):
    """The image is over images.LARGE_DECODE decoded: the large lane reads it."""


class Workers:
    """COUNT workers for images of any size up to images.LARGE_DECODE decoded,
    and one for larger ones: ask() sends a request to the one with the fewest
    waiting, and an image found large on to the large lane."""

    def __init__(self, holder, count, max_batch):
        self.spawner = Spawner(holder, max_batch)  # first: forked before any thread exists
        self.started = [self.spawner.fork(lane) for lane in [SMALL_LANE] * count + [LARGE_LANE]]
        self.links = {SMALL_LANE: [], LARGE_LANE: []}
        self.coming = {SMALL_LANE: 0, LARGE_LANE: 0}  # replacements under way
        self.replacing = self.changed = None  # made on the loop (see start)

    async def start(self):
        """Connect the workers forked at start to the running loop."""
        self.replacing = asyncio.Lock()  # one replacement at a time: the spawner's pace
        self.changed = asyncio.Condition()  # a worker joined, or a replacement failed
        for pid, sock, lane in self.started:
            await self.connect(pid, sock, lane)
        self.started = []

    async def connect(self, pid, sock, lane):
        loop = asyncio.get_running_loop()
        _, link = await loop.create_connection(lambda: Link(pid, lane, self.lost), sock=sock)
        self.links[lane].append(link)

    async def ask(self, body, content_type, with_input, deadline):
        """(status, payload): a worker's answer to a request."""
        header = json.dumps({"type": content_type or "", "input": with_input, "deadline": deadline})
        frame = struct.pack(">II", len(header), len(body)) + header.encode() + body
        status, payload = await self.send(SMALL_LANE, frame)
        if status == LARGE:
            status, payload = await self.send(LARGE_LANE, frame)
        return status, payload

    async def send(self, lane, frame):
        while not self.links[lane]:  # (each died: wait for the ones coming in their place)
            if not self.coming[lane]:
                raise Unavailable("every worker died and none could be started")
            async with self.changed:
                await self.changed.wait()
        link = min(self.links[lane], key=lambda link: len(link.pending))
        future = link.send(frame)
        try:
            return await future
        except asyncio.CancelledError:  # (the request's time ran out) its answer still comes
            link.watch(future)
            raise

    def waiting(self):
        """{"small": N, "large": N}: the requests each lane has yet to answer."""
        count = {
            lane: sum(len(link.pending) for link in links) for lane, links in self.links.items()
        }
        return {"small": count[SMALL_LANE], "large": count[LARGE_LANE]}

    def lost(self, link):
        """LINK's worker died: a note, and a new worker from the spawner in its place."""
        self.links[link.lane].remove(link)
        self.coming[link.lane] += 1
        asyncio.get_running_loop().create_task(self.replace(link))

    async def replace(self, link):
        async with self.replacing:
            loop = asyncio.get_running_loop()
            new = await loop.run_in_executor(None, self.spawner.fork, link.lane)
            if new is not None:
                await self.connect(*new)
        self.coming[link.lane] -= 1
        async with self.changed:
            self.changed.notify_all()
        left = sum(map(len, self.links.values()))
        then = f"replaced by {new[0]}" if new else f"none to replace it, {left} left"
        bounds.LIMITED.note(f"workers: {link.pid} ended, {then}")

    def close(self):
        self.spawner.stop()
        for pid in [link.pid for links in self.links.values() for link in links]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass  # (the spawner's children: the kernel reaps them)


class Link(asyncio.Protocol):
    """The server's end of one worker's socket: requests out, and their
    answers back in the same order, each to the future that waits for it."""

    def __init__(self, pid, lane, lost):
        self.pid, self.lane, self.lost = pid, lane, lost
        self.pending, self.buffer, self.transport = collections.deque(), bytearray(), None

    def connection_made(self, transport):
        self.transport = transport

    def send(self, frame):
        future = asyncio.get_running_loop().create_future()
        self.pending.append(future)
        self.transport.write(frame)
        return future

    def data_received(self, data):
        self.buffer += data
        while len(self.buffer) >= 5:
            status, length = struct.unpack_from(">BI", self.buffer)
            if len(self.buffer) < 5 + length:
                break
            payload = bytes(self.buffer[5 : 5 + length])
            del self.buffer[: 5 + length]
            future = self.pending.popleft()
            if not future.done():
                future.set_result((status, payload))

    def connection_lost(self, exc):
        for future in self.pending:
            if not future.done():
                future.set_exception(Unavailable("the worker reading it died"))
        self.pending.clear()
        self.lost(self)

    def watch(self, future):
        """A request gave up on FUTURE: if its answer never comes, the worker hangs."""

        def check():
            if future in self.pending and not self.transport.is_closing():
                os.kill(self.pid, signal.SIGKILL)

        asyncio.get_running_loop().call_later(STUCK_SECONDS, check)


class Spawner:
    """A process forked before any thread exists, whose only work is forking
    workers: fork(lane) asks it for one, and gets (pid, the server's end of its
    socket pair, lane), or None once the spawner is gone."""

    def __init__(self, holder, max_batch):
        self.control, theirs = socket.socketpair()
        self.pid = os.fork()
        if self.pid == 0:
            self.control.close()
            processes.name_process("serve-spawner")
            signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # its workers: reaped by the kernel
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            holder.warn = quiet  # (the server's own holder says it)
            torch_for_workers()  # (before the warm-up: it runs what the workers will)
            warm_up(holder)
            os._exit(spawn_on_request(theirs, holder, max_batch))
        theirs.close()
        self.control.settimeout(SPAWN_SECONDS)

    def fork(self, lane):
        if self.control is None:
            return None
        try:
            self.control.sendall(lane)
            message, fds, _, _ = socket.recv_fds(self.control, 8, 1)
            if len(message) == 8 and len(fds) == 1:
                return int.from_bytes(message, "big"), socket.socket(fileno=fds[0]), lane
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


def torch_for_workers():
    """torch as the workers run it, set in the spawner, whose forks inherit
    it: one thread (the workers are the parallelism, and the spawner must
    start none before it forks), and torch's own convolution kernels (for a
    batch of a few 28x28 images, oneDNN's setup of each convolution costs more
    than the convolution)."""
    import torch  # noqa: PLC0415

    torch.set_num_threads(1)
    torch.backends.mkldnn.enabled = False


def warm_up(holder):
    """One image read and answered before any worker is forked: the first
    call's costs (lazy imports, first allocations) are then paid once, and
    every worker starts with them paid."""
    from PIL import Image, ImageDraw  # noqa: PLC0415

    image, buffer = Image.new("L", (28, 28), 255), io.BytesIO()
    ImageDraw.Draw(image).line([(14, 4), (12, 24)], fill=0, width=3)
    image.save(buffer, "PNG")
    header = {"type": "image/png", "input": True, "deadline": math.inf}
    answers([(header, buffer.getvalue())], holder, large_lane=True)


def spawn_on_request(control, holder, max_batch):
    """The spawner's life: a worker per lane byte received, until the server goes."""
    try:
        while lane := control.recv(1):
            mine, theirs = socket.socketpair()
            pid = os.fork()
            if pid == 0:
                control.close()
                mine.close()
                run_worker(theirs, holder, max_batch if lane == SMALL_LANE else 1, lane)
            theirs.close()
            socket.send_fds(control, [pid.to_bytes(8, "big")], [mine.fileno()])
            mine.close()
    except BaseException:  # noqa: BLE001 - the spawner ends here, whatever happens
        return 1
    return 0


def run_worker(sock, holder, max_batch, lane):
    """A worker's process, from its fork to its exit: never returns."""
    code = 0
    try:
        processes.name_process("serve-large" if lane == LARGE_LANE else "serve-worker")
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # (Ctrl-C and docker stop are the server's)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        frames = Frames(sock)
        while (batch := frames.batch(max_batch)) is not None:
            sock.sendall(b"".join(answers(batch, holder, lane == LARGE_LANE)))
    except BaseException:  # noqa: BLE001 - a worker ends here, whatever happens
        code = 1
    os._exit(code)


class Frames:
    """The requests a worker reads from its socket."""

    def __init__(self, sock):
        self.sock, self.buffer = sock, bytearray()

    def batch(self, most):
        """The requests that have arrived: at least one, at most MOST (None
        once the server has gone)."""
        while not (frames := self.take(most)):
            chunk = self.sock.recv(GATHER)
            if not chunk:
                return None
            self.buffer += chunk
            try:  # (what else has arrived meanwhile: one batch)
                while len(self.buffer) < GATHER and (
                    chunk := self.sock.recv(GATHER, socket.MSG_DONTWAIT)
                ):
                    self.buffer += chunk
            except BlockingIOError:
                pass
        return frames

    def take(self, most):
        frames, at = [], 0
        while len(frames) < most and len(self.buffer) - at >= 8:
            header_length, body_length = struct.unpack_from(">II", self.buffer, at)
            end = at + 8 + header_length + body_length
            if len(self.buffer) < end:
                break
            header = json.loads(self.buffer[at + 8 : at + 8 + header_length])
            frames.append((header, bytes(self.buffer[at + 8 + header_length : end])))
            at = end
        del self.buffer[:at]
        return frames


def answers(batch, holder, large_lane):
    """The answer frames to BATCH's requests: each image read, then one
    forward pass for all, by one and the same model."""
    import torch  # noqa: PLC0415

    model, state = holder.current()  # (the same for the preparation and the answer)
    dataset, replies, read = dataset_of(state), [None] * len(batch), []
    for i, (header, body) in enumerate(batch):
        replies[i], image = read_one(header, body, dataset, large_lane)
        if image is not None:
            read.append((i, image))
    if read:
        pixels = bytearray(b"".join(image for _, image in read))
        images = torch.frombuffer(pixels, dtype=torch.uint8).view(len(read), 28, 28)
        try:
            found = class_probabilities(model, images, dataset)
        except Exception as e:  # noqa: BLE001 - every request of the batch hears of it
            found = [e] * len(read)
        for (i, image), probabilities in zip(read, found, strict=True):
            replies[i] = reply_to(batch[i][0], probabilities, image, state)
    return [struct.pack(">BI", status, len(payload)) + payload for status, payload in replies]


def read_one(header, body, dataset, large_lane):
    """(a request's reply, None), or (None, the 784 bytes of the image it sent)."""
    if time.monotonic() > header["deadline"]:
        return (LATE, b""), None  # (its client has been answered already: not worth reading)
    try:
        source = io.BytesIO(request_image(body, header["type"]))
        large = contextlib.nullcontext if large_lane else too_large
        return None, prepare_image("the image", dataset, source, large=large).numpy().tobytes()
    except Large:
        return (LARGE, b""), None
    except InputError as e:
        return (REFUSED, str(e).encode()), None
    except Exception as e:  # noqa: BLE001 - an answer, never a dead worker
        return (REFUSED, f"the image: not a readable image ({type(e).__name__})".encode()), None


def too_large():
    raise Large


def reply_to(header, probabilities, image, state):
    if isinstance(probabilities, Exception):
        return FAILED, f"{type(probabilities).__name__}: {probabilities}".encode()
    return ANSWER, json.dumps(answer(probabilities, image, state, header["input"])).encode()
