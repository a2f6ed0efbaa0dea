"""What each request may take, and what keeps `serve` answering when
clients misbehave: a bound on open connections, deadlines, and logs that
cannot flood.

A request's body is at most MAX_BODY and must arrive within BODY_SECONDS
(413, 408); its answer comes within REQUEST_SECONDS (503); at most
MAX_WAITING bytes of bodies wait for their answers (503 beyond); the decoded size
is bounded by images.DECODE_BUDGET. So each request's memory is bounded too.

uvicorn bounds concurrent requests (limit_concurrency: 503 beyond) and idle
keep-alive connections, but a client that sends its headers or its body a
byte at a time, or never reads its answer, holds its connection, and its file
descriptor, for ever; thousands of them exhaust the process's descriptors,
and every refused accept logs a traceback. GuardedH11 (uvicorn's own h11
protocol, passed as Config(http=...)) gives each request HEADER_SECONDS to
send its headers, and beyond MAX_CONNECTIONS closes the connection that has
waited longest for a slow client: for its headers, for the rest of its body,
or for the client to read its answer. A working client is never among them:
its request is in, and the server is at work on it. RateLimited turns a burst
of one message into one line and a count.
"""

import asyncio
import collections
import logging
import resource
import socket
import time

from uvicorn.protocols.http.h11_impl import H11Protocol

MAX_BODY = 4 * 2**20  # bytes: a drawing is a few KB, a phone photo a few MB
DRAIN = 4 * MAX_BODY  # a body over MAX_BODY is read on (and dropped) up to this
BODY_SECONDS = 10.0  # for a request's body to arrive
REQUEST_SECONDS = 10.0  # for its answer, in all
# The bytes of the bodies that wait for their answers; beyond, 503 at once: a
# bound on memory, not on the count (thousands of drawings take a few MB).
MAX_WAITING = 64 * 2**20
HEADER_SECONDS = 10.0  # from a connection's start (or its last answer) to a request's headers
MAX_CONNECTIONS = 512  # open at once; beyond, the one waiting longest on its client is closed
# uvicorn's limit counts open connections too, idle or slow ones included: it
# is only a backstop above the bound on connections (which closes the slowest
# instead of refusing a working client); MAX_WAITING bounds the work.
LIMIT_CONCURRENCY = 2 * MAX_CONNECTIONS
PHASES = ("headers", "body", "answer")
LOG_INTERVAL = 10.0  # seconds: at most one line per kind of message each


class GuardedH11(H11Protocol):
    """uvicorn's h11 protocol with a header deadline and a connection bound."""

    # The connections waiting on their client, longest first, each with what
    # it waits for: "headers", "body" (the rest of it), "answer" (to be read).
    waiting = collections.OrderedDict()
    open_count = 0

    def connection_made(self, transport):
        super().connection_made(transport)
        # asyncio sets TCP_NODELAY only on sockets made with IPPROTO_TCP, and a
        # listener from socket.create_server (proto 0) passes its 0 on: each
        # answer on a kept-alive connection then waited 40 ms (Nagle against
        # the client's delayed ACK).
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.deadline = None
        self.arm()
        GuardedH11.open_count += 1
        if len(self.connections) > MAX_CONNECTIONS:
            oldest = next(iter(self.waiting))
            LIMITED.note(f"over {MAX_CONNECTIONS} connections: closed the one waiting longest")
            oldest.drop()

    def arm(self):
        """Start the wait for a request's headers."""
        self.deadline = self.loop.call_later(HEADER_SECONDS, self.too_slow)
        self.waiting[self] = "headers"

    def disarm(self):
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None
        self.waiting.pop(self, None)

    def data_received(self, data):
        super().data_received(data)
        if self.cycle is None or self.cycle.response_complete:
            return
        if self.deadline is not None:  # the headers are in: the body has the app's own limit
            self.deadline.cancel()
            self.deadline = None
        if self.cycle.more_body:
            self.waiting[self] = "body"  # (in its place: it has waited since its headers)
        else:
            self.waiting.pop(self, None)  # the request is in: the server's turn

    def pause_writing(self):
        super().pause_writing()
        self.waiting[self] = "answer"  # the client does not read its answer

    def resume_writing(self):
        super().resume_writing()
        self.waiting.pop(self, None)

    def on_response_complete(self):
        super().on_response_complete()
        if not self.transport.is_closing():
            self.disarm()
            self.arm()  # a kept-alive connection: the next request's headers

    def connection_lost(self, exc):
        self.disarm()
        GuardedH11.open_count -= 1
        super().connection_lost(exc)

    @classmethod
    def census(cls):
        """The open connections, and those waiting on their client, by what for."""
        waiting = collections.Counter(cls.waiting.values())
        return {"open": cls.open_count, **{f"waiting for {k}": waiting[k] for k in PHASES}}

    def too_slow(self):
        LIMITED.note(f"closed connections that sent no request within {HEADER_SECONDS:g} s")
        self.drop()

    def drop(self):
        self.disarm()
        self.transport.close()


class RateLimited(logging.Filter):
    """At most one line per kind of message (its text up to the first colon)
    every LOG_INTERVAL seconds, then the count of those held back; tracebacks
    are dropped (a burst of failed accepts logs one each)."""

    def __init__(self, say=None):
        super().__init__()
        self.say = say
        self.last, self.held = {}, collections.Counter()

    def filter(self, record):
        return self.allow(record.getMessage(), record)

    def allow(self, message, record=None):
        kind = message.split(":")[0][:60]
        now = time.monotonic()
        if now - self.last.get(kind, -LOG_INTERVAL) < LOG_INTERVAL:
            self.held[kind] += 1
            return False
        self.last[kind] = now
        if self.held[kind] and record is not None:
            record.msg, record.args = f"{message} ({self.held[kind]} more like it held back)", ()
        self.held[kind] = 0
        if record is not None:
            record.exc_info, record.exc_text, record.stack_info = None, None, None
        return True

    def note(self, message):
        """Our own message, limited the same way."""
        held = self.held[message.split(":")[0][:60]]
        if self.allow(message) and self.say is not None:
            self.say(f"warning: {message}" + (f" ({held} more held back)" if held else ""))


LIMITED = RateLimited()


def quiet_logs(say):
    """Rate-limit uvicorn's and asyncio's log lines, and ours (LIMITED)."""
    LIMITED.say = say
    for name in ("uvicorn.error", "uvicorn", "asyncio"):
        logger = logging.getLogger(name)
        if LIMITED not in logger.filters:
            logger.addFilter(LIMITED)


def raise_descriptor_limit():
    """Use the hard limit of open files (the soft one is often 1024): each
    connection is one, and MAX_CONNECTIONS must fit with room to spare."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError):
            pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


async def receive(headers, messages):
    """(the request's body, None), or (None, (what is wrong, its status)):
    over MAX_BODY (413), or slower than BODY_SECONDS to arrive (408). HEADERS:
    the request's, a dict of the ASGI scope's; MESSAGES: its ASGI receive. A
    body over the limit is read on (not kept) up to DRAIN bytes, so that the
    client, still sending, gets the 413 rather than a reset connection."""
    declared = headers.get(b"content-length", b"")
    if declared.isdigit() and int(declared) > DRAIN:
        return None, too_large()  # (then closed: not worth reading)
    body, size, more = bytearray(), 0, True
    try:
        async with asyncio.timeout(BODY_SECONDS):
            while more and size <= DRAIN:
                message = await messages()
                if message["type"] == "http.disconnect":
                    # (closed: by the client, or for the bound on connections)
                    return None, ("The client closed the connection before its body arrived.", 400)
                chunk, more = message.get("body", b""), message.get("more_body", False)
                size += len(chunk)
                if size <= MAX_BODY:
                    body += chunk
    except TimeoutError:
        return None, (f"The body took over {BODY_SECONDS:g} s to arrive.", 408)
    return (bytes(body), None) if size <= MAX_BODY else (None, too_large())


def too_large():
    return f"The body is over {MAX_BODY // 2**20} MB, the most this accepts.", 413
