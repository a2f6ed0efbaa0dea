"""What keeps `serve` answering when clients misbehave: a bound on open
connections, a deadline for a request's headers, and logs that cannot flood.

uvicorn bounds concurrent requests (limit_concurrency: 503 beyond) and idle
keep-alive connections, but a client that sends its headers a byte at a time
holds its connection, and its file descriptor, for ever; thousands of them
exhaust the process's descriptors, and every refused accept logs a traceback.
GuardedH11 (uvicorn's own h11 protocol, passed as Config(http=...)) gives
each request HEADER_SECONDS to send its headers, and beyond MAX_CONNECTIONS
closes the connection that has waited longest for its headers (a slow client,
not a working one). RateLimited turns a burst of one message into one line
and a count.
"""

import collections
import logging
import resource
import socket
import time

from uvicorn.protocols.http.h11_impl import H11Protocol

HEADER_SECONDS = 10.0  # from a connection's start (or its last answer) to a request's headers
MAX_CONNECTIONS = 512  # open at once; beyond, the longest waiting for headers is closed
LOG_INTERVAL = 10.0  # seconds: at most one line per kind of message each


class GuardedH11(H11Protocol):
    """uvicorn's h11 protocol with a header deadline and a connection bound."""

    waiting = collections.OrderedDict()  # connections awaiting headers, oldest first

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
        if len(self.connections) > MAX_CONNECTIONS and self.waiting:
            oldest = next(iter(self.waiting))
            LIMITED.note(f"over {MAX_CONNECTIONS} connections: closed the one waiting longest")
            oldest.drop()

    def arm(self):
        """Start the wait for a request's headers."""
        self.deadline = self.loop.call_later(HEADER_SECONDS, self.too_slow)
        self.waiting[self] = None

    def disarm(self):
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None
        self.waiting.pop(self, None)

    def data_received(self, data):
        super().data_received(data)
        if self.cycle is not None and not self.cycle.response_complete:
            self.disarm()  # the headers are in: the app's own limits apply to the body

    def on_response_complete(self):
        super().on_response_complete()
        if not self.transport.is_closing():
            self.disarm()
            self.arm()  # a kept-alive connection: the next request's headers

    def connection_lost(self, exc):
        self.disarm()
        super().connection_lost(exc)

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
