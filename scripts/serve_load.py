#!/usr/bin/env python3
"""Load `serve` and two reference servers side by side, and print what each held.

    python scripts/serve_load.py --checkpoint model_checkpoint.pth
    python scripts/serve_load.py --checkpoint ck.pth --update-docs   # docs/performance.md
    python scripts/serve_load.py --checkpoint ck.pth --servers "serve --workers 1" \\
        "serve --workers 2" serve@1d67ae9   # process models side by side

The servers, each started afresh for each measurement, one after the other:
  ceiling   Starlette on uvicorn answering a constant JSON after reading the
            body: the most the web framework itself carries on this machine;
  naive     a tutorial's server: PIL decode, normalise and the same Net's
            forward pass, in the async handler;
  serve     `main.py serve` (with its flags after a space; @COMMIT: as that
            commit has it, from a git worktree).
The mix: C clients, each posting the same 100x100 PNG digit back to back, a
new connection for each request (as `ab -c C` does); requests/s, p50 and p99
latency, failures (any status but 200), and for serve the memory of its whole
process tree (PSS: shared pages counted once) at the end of the load. Then
how long small requests take while large images are being read. Time only on
an idle machine.
"""

import argparse
import asyncio
import io
import json
import os
import statistics
import subprocess
import sys
import time

import psutil

sys.path.insert(
    0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools")
)
from benchlib import pss_kb  # noqa: E402
from harness import REPO, update_doc  # noqa: E402
from servers import WORKTREES, Server  # noqa: E402


def digit_png(side=100, page=None):
    """A drawn digit (a stroke on white) as PNG bytes: SIDE pixels, or PAGE."""
    from PIL import Image, ImageDraw  # noqa: PLC0415

    side = page or side
    image = Image.new("L", (side, side), 255)
    ImageDraw.Draw(image).line(
        [(side // 2, side // 10), (side * 9 // 20, side * 9 // 10)], fill=0, width=side // 12
    )
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


async def post(port, body, path="/predict"):
    """One request on a new connection: (status, seconds)."""
    started = time.perf_counter()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
        writer.write(head.encode() + b"Content-Type: image/png\r\nConnection: close\r\n\r\n" + body)
        status = int((await reader.readline()).split()[1])
        await reader.read()  # (to the server's close)
        writer.close()
    except (OSError, IndexError, ValueError):
        status = 0
    return status, time.perf_counter() - started


async def client(port, body, until, results):
    while time.perf_counter() < until:
        results.append(await post(port, body))


async def load(port, body, clients, seconds):
    """CLIENTS posting BODY back to back for SECONDS: (results, seconds taken)."""
    results, started = [], time.perf_counter()
    until = started + seconds
    await asyncio.gather(*(client(port, body, until, results) for _ in range(clients)))
    return results, time.perf_counter() - started


def tree_memory_mb(pid):
    """The server's processes' PSS, summed (pages they share counted once)."""
    tree = [pid, *(p.pid for p in psutil.Process(pid).children(recursive=True))]
    return sum(map(pss_kb, tree)) / 1024


def one_load(spec, checkpoint, body, clients, seconds):
    with Server(spec, checkpoint) as (port, pid):
        asyncio.run(load(port, body, 1, 1.0))  # (a warm-up)
        results, took = asyncio.run(load(port, body, clients, seconds))
        memory = tree_memory_mb(pid)
    times = sorted(t for _, t in results)
    return {
        "requests": len(results),
        "failed": sum(1 for s, _ in results if s != 200),
        "per_s": len(results) / took,
        "p50_ms": 1000 * times[len(times) // 2],
        "p99_ms": 1000 * times[max(0, int(len(times) * 0.99) - 1)],
        "memory_mb": memory,
    }


def measure(servers, checkpoint, levels, seconds, repeats):
    """One row per client count and server: REPEATS runs, the servers taking
    turns within each repeat (so a busy moment falls on all of them alike)."""
    body, rows = digit_png(), {}
    for clients in levels:
        for _ in range(repeats):
            for spec in servers:
                run = one_load(spec, checkpoint, body, clients, seconds)
                rows.setdefault((clients, spec), []).append(run)
                print(json.dumps({"clients": clients, "server": spec, **run}), flush=True)
    return rows


async def small_while_large(port, large_clients, seconds):
    """Small requests' latencies while LARGE_CLIENTS post 7000x7000 PNGs back to back."""
    small, large, stop = digit_png(), digit_png(page=7000), time.perf_counter() + seconds
    big, smalls = [], []
    tasks = [client(port, large, stop, big) for _ in range(large_clients)]
    await asyncio.gather(client(port, small, stop, smalls), *tasks)
    return smalls, big


def spread(runs, key, digits, unit=""):
    """The median of the runs' KEY, and their range where they differ."""
    values = sorted(r[key] for r in runs)
    low, high = f"{values[0]:.{digits}f}", f"{values[-1]:.{digits}f}"
    text = f"{statistics.median(values):.{digits}f}{unit}"
    return text if low == high else f"{text} ({low}-{high})"


def markdown(rows, commit, cores, repeats):
    lines = [
        f"On {cores} cores at commit {commit} (`python scripts/serve_load.py`): the median "
        f"of {repeats} runs, each on a server started afresh, and their range; the 100x100 "
        "PNG digit, a new connection for each request.",
        "",
        "| clients | server | requests/s | x ceiling | p50 | p99 | failed | memory |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for (clients, spec), runs in rows.items():
        ceiling = rows.get((clients, "ceiling"))
        ratio = "" if ceiling is None else f"{ratio_of(runs, ceiling):.2f}"
        failed = sum(run["failed"] for run in runs)
        memory = f"{max(run['memory_mb'] for run in runs):.0f} MB"
        cells = [spread(runs, "per_s", 0), ratio, spread(runs, "p50_ms", 1, " ms")]
        cells += [spread(runs, "p99_ms", 1, " ms"), str(failed), memory]
        lines.append(f"| {clients} | {spec} | {' | '.join(cells)} |")
    return "\n".join(lines)


def ratio_of(runs, ceiling):
    return statistics.median(r["per_s"] for r in runs) / statistics.median(
        r["per_s"] for r in ceiling
    )


def large_lines(checkpoint, seconds):
    out = []
    for large_clients in (0, 2, 8):
        with Server("serve", checkpoint) as (port, _):
            smalls, big = asyncio.run(small_while_large(port, large_clients, seconds))
        times = sorted(t for _, t in smalls)
        failed = sum(1 for s, _ in smalls + big if s != 200)
        out.append(
            f"| {large_clients} | {len(big)} | {1000 * statistics.median(times):.1f} ms | "
            f"{1000 * times[-1]:.1f} ms | {failed} |"
        )
        print(out[-1], flush=True)
    head = "| clients posting 7000x7000 PNGs | large answered | small p50 | small max | failed |"
    return "\n".join(
        ["", "While large images are read (serve):", "", head, "|" + " ---: |" * 5, *out]
    )


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--servers", nargs="+", default=["ceiling", "naive", "serve"])
    p.add_argument("--clients", type=int, nargs="+", default=[1, 32, 256])
    p.add_argument("--seconds", type=float, default=5.0, help="per measurement (default: 5)")
    p.add_argument("--repeats", type=int, default=3, help="runs per measurement (default: 3)")
    p.add_argument("--update-docs", action="store_true")
    args = p.parse_args()
    try:
        rows = measure(args.servers, args.checkpoint, args.clients, args.seconds, args.repeats)
        large = large_lines(args.checkpoint, args.seconds)
    finally:
        for path in WORKTREES.values():
            subprocess.run(["git", "-C", REPO, "worktree", "remove", "--force", path], check=False)
    commit = subprocess.run(
        ["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    text = markdown(rows, commit, psutil.cpu_count(), args.repeats) + "\n" + large
    print(text)
    if args.update_docs:
        update_doc(os.path.join(REPO, "docs", "performance.md"), "serve", text)


if __name__ == "__main__":
    main()
