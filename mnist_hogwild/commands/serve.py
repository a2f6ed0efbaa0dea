"""The `serve` command: the serving layer (mnist_hogwild/serving) on a
checkpoint, until a stop signal (Ctrl-C, docker stop)."""

from mnist_hogwild.serving.app import serve


def run_command(args):
    import torch  # noqa: PLC0415

    # One torch thread: the workers and the batches are the parallelism
    # (intra-op threads cost a small image far more in hand-offs than they give).
    torch.set_num_threads(1)
    return serve(args.checkpoint, args.host, args.port, args.max_batch, args.workers)
