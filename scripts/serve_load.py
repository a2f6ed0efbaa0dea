#!/usr/bin/env python3
"""Load `serve` as many clients would, and print what it held.

    python scripts/serve_load.py --checkpoint model_checkpoint.pth
    python scripts/serve_load.py --checkpoint ck.pth --update-docs   # docs/performance.md

Starts `main.py serve` on a free port, then for 1, 8 and 32 concurrent
clients (each one keep-alive connection, requests back to back) POSTs a
28x28 PNG and a 1 MB phone photo: requests/s, p50 and p99 latency, the
server's peak memory over idle (the growth of each of its processes, summed). Then the page's latency (GET /) while a
7000x7000 PNG is being read. Time only on an idle machine.
"""

import argparse
import asyncio
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import time

import psutil

sys.path.insert(
    0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools")
)
from harness import REPO, update_doc  # noqa: E402


def images():
    """{name: PNG or JPEG bytes}: a drawn 28x28 digit, a 1 MB photo, a 7000x7000 page."""
    from PIL import Image, ImageDraw, ImageFilter  # noqa: PLC0415

    small = Image.new("L", (28, 28), 0)
    ImageDraw.Draw(small).line([(14, 4), (12, 24)], fill=255, width=3)
    photo = Image.effect_noise((2400, 1800), 40).convert("RGB").filter(ImageFilter.GaussianBlur(1))
    photo = Image.blend(photo, Image.new("RGB", photo.size, (225, 220, 205)), 0.6)
    ImageDraw.Draw(photo).line([(1200, 500), (1150, 1300)], fill=(30, 30, 60), width=70)
    page = Image.new("L", (7000, 7000), 255)
    ImageDraw.Draw(page).line([(3500, 1000), (3300, 6000)], fill=0, width=300)
    out = {}
    for name, image, fmt, options in (
        ("28x28 PNG", small, "PNG", {}),
        ("1 MB photo", photo, "JPEG", {"quality": 93}),
        ("7000x7000 PNG", page, "PNG", {}),
    ):
        buffer = io.BytesIO()
        image.save(buffer, fmt, **options)
        out[name] = buffer.getvalue()
    return out


async def request(reader, writer, method, path, body=b""):
    """One HTTP/1.1 request on a kept-alive connection: (status, seconds)."""
    started = time.perf_counter()
    head = f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
    writer.write(head.encode() + b"Content-Type: application/octet-stream\r\n\r\n" + body)
    status = int((await reader.readline()).split()[1])
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    await reader.readexactly(length)
    return status, time.perf_counter() - started


async def client(port, body, count, results):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for _ in range(count):
        results.append(await request(reader, writer, "POST", "/predict", body))
    writer.close()


async def load(port, body, clients, total):
    results = []
    started = time.perf_counter()
    await asyncio.gather(*(client(port, body, total // clients, results) for _ in range(clients)))
    return results, time.perf_counter() - started


def memory(pid):
    """The server's memory with its image readers: their PSS summed (pages
    they share counted once, as a container's memory limit counts them)."""
    server = psutil.Process(pid)
    return sum(p.memory_full_info().pss for p in [server, *server.children()])


def status_kb(pid, field):
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


class Peak:
    """How much the server's processes grew at most within a with block: the
    kernel's peak RSS of each (VmHWM, reset on entry through clear_refs, so
    nothing samples, and no peak is missed) less its RSS then, summed: an
    upper bound, as if every process peaked at once."""

    def __init__(self, pid):
        server = psutil.Process(pid)
        self.pids = [server.pid, *(p.pid for p in server.children())]

    def __enter__(self):
        self.start = {}
        for pid in self.pids:
            with open(f"/proc/{pid}/clear_refs", "w") as f:
                f.write("5")  # (reset the peak to the current RSS; root only)
            self.start[pid] = status_kb(pid, "VmRSS")
        return self

    def __exit__(self, *exc):
        grown = sum(status_kb(pid, "VmHWM") - self.start[pid] for pid in self.pids)
        self.peak_mb = grown / 1024


def measure_loads(checkpoint, bodies, levels, seconds_each, repeats):
    """One row per image and client count: REPEATS runs, each on a server
    started afresh (so that a run's memory is over that server's own idle)."""
    rows = []
    for name in ("28x28 PNG", "1 MB photo"):
        for clients in levels:
            runs = [
                one_load(checkpoint, bodies[name], clients, seconds_each) for _ in range(repeats)
            ]
            rows.append({"image": name, "clients": clients, "runs": runs})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def one_load(checkpoint, body, clients, seconds):
    with Server(checkpoint) as (port, pid):
        _, took = asyncio.run(load(port, body, 1, 5))  # (a warm-up, and a rate)
        total = max(clients * 4, int(seconds * 5 / took) // clients * clients)
        with Peak(pid) as peak:
            results, took_all = asyncio.run(load(port, body, clients, total))
    times = sorted(t for _, t in results)
    return {
        "requests": len(results),
        "failed": sum(1 for s, _ in results if s != 200),
        "per_s": len(results) / took_all,
        "p50_ms": 1000 * times[len(times) // 2],
        "p99_ms": 1000 * times[int(len(times) * 0.99) - 1],
        "peak_memory_over_idle_mb": peak.peak_mb,
    }


def spread(runs, key, digits, unit=""):
    """The median of the runs' KEY, and their range where they differ."""
    values = sorted(r[key] for r in runs)
    low, high = f"{values[0]:.{digits}f}", f"{values[-1]:.{digits}f}"
    text = f"{statistics.median(values):.{digits}f}{unit}"
    return text if low == high else f"{text} ({low}-{high})"


async def page_during_upload(port, big):
    """(the 7000x7000 upload's status and seconds, GET / latencies meanwhile)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    upload = asyncio.create_task(request(reader, writer, "POST", "/predict", big))
    pages = []
    r2, w2 = await asyncio.open_connection("127.0.0.1", port)
    await asyncio.sleep(0.05)  # (the upload's bytes are on their way)
    while not upload.done():
        pages.append((await request(r2, w2, "GET", "/"))[1])
    return await upload, pages


class Server:
    """`main.py serve` on a free port, from start to stop: (port, pid)."""

    def __init__(self, checkpoint):
        self.checkpoint = checkpoint

    def __enter__(self):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        args = [sys.executable, os.path.join(REPO, "main.py"), "serve", "--checkpoint"]
        self.proc = subprocess.Popen(
            args + [self.checkpoint, "--port", str(port)], stdout=subprocess.PIPE, text=True
        )
        line = self.proc.stdout.readline()  # "serving ..." once it listens
        if not line.startswith("serving"):
            self.__exit__()
            sys.exit(f"serve did not start: {line}")
        return port, self.proc.pid

    def __exit__(self, *exc):
        self.proc.terminate()
        self.proc.wait()


def markdown(rows, upload, pages, cores, upload_memory, idle):
    repeats = len(rows[0]["runs"])
    lines = [
        f"On {cores} cores, nothing else running (`python scripts/serve_load.py`); the "
        f"median of {repeats} runs, each on a server started afresh, and their range:",
        "",
        "| image | clients | requests/s | p50 | p99 | peak memory over idle | failed |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        runs, failed = r["runs"], sum(run["failed"] for run in r["runs"])
        cells = [
            spread(runs, "per_s", 0),
            spread(runs, "p50_ms", 1, " ms"),
            spread(runs, "p99_ms", 1, " ms"),
            f"{max(run['peak_memory_over_idle_mb'] for run in runs):.0f} MB",
        ]
        lines.append(f"| {r['image']} | {r['clients']} | {' | '.join(cells)} | {failed} |")
    status, seconds = upload
    lines += [
        "",
        f"A 7000x7000 PNG (status {status}) took {seconds:.2f} s and {upload_memory:.0f} MB "
        f"over idle; meanwhile `GET /` answered {len(pages)} times, at most in "
        f"{1000 * max(pages):.1f} ms. At start, the server took {idle:.0f} MB with its image "
        f"readers (PSS summed: shared pages counted once). Memory over idle: each process's "
        f"peak RSS growth (VmHWM), summed.",
    ]
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--seconds", type=float, default=5.0, help="per measurement (default: 5)")
    p.add_argument("--repeats", type=int, default=3, help="runs per measurement (default: 3)")
    p.add_argument("--update-docs", action="store_true")
    args = p.parse_args()
    bodies = images()
    rows = measure_loads(args.checkpoint, bodies, args.clients, args.seconds, args.repeats)
    with Server(args.checkpoint) as (port, pid):
        started_with = memory(pid)
        with Peak(pid) as peak:
            upload, pages = asyncio.run(page_during_upload(port, bodies["7000x7000 PNG"]))
    upload_memory = peak.peak_mb
    print(
        f"7000x7000 PNG: {upload}, peak memory over idle {upload_memory:.0f} MB; "
        f"GET / meanwhile: {len(pages)} answers, max {1000 * max(pages):.1f} ms"
    )
    text = markdown(rows, upload, pages, psutil.cpu_count(), upload_memory, started_with / 2**20)
    print(text)
    if args.update_docs:
        update_doc(os.path.join(REPO, "docs", "performance.md"), "serve", text)


if __name__ == "__main__":
    main()
