"""The serving layer: what `serve` runs, below the commands that use it.

The process model. One server process runs uvicorn's event loop, which only
moves bytes: it reads each request's body within its bounds (bounds.py) and
writes it to a worker over a socket pair. Worker processes, forked before any
thread exists from a spawner that also replaces the ones that die, each hold
their own copy of the model (holder.py): a worker reads the requests waiting
on its socket, prepares each image (images.py, as `infer` does), runs one
forward pass for all of them, and writes back each answer's JSON, which the
loop sends on as it is. So no image work and no forward pass shares an
interpreter lock with the loop. The server sends each request to the worker
with the fewest waiting; an image over images.LARGE_DECODE decoded goes on to
the one worker for large images, so that large images wait for each other and
never for small ones, and at most one is decoded at a time. A worker checks
the checkpoint before each batch: an image is prepared for, and answered by,
one and the same model. POST /predict is a bare ASGI app in front of the
framework (app.Front), which has the other routes: the framework's request
and response cost more than the rest of the server's work on a request.

    app.py       the HTTP app: routes, the access log, serve()
    bounds.py    the size, time and connection bounds; the rate-limited logs
    workers.py   the workers, the spawner, and the server's side of them
    holder.py    the model, loaded again when its file changes; the answer
    images.py    an image read as the model reads it (shared with infer)
"""
