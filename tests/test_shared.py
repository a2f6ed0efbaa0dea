"""shared.py's pieces, in process."""

import sys

import shared


def test_fd_server_errors_become_one_line_and_others_keep_their_traceback(monkeypatch, capfd):
    calls = []
    monkeypatch.setattr(sys, "excepthook", lambda *exc: calls.append(exc[0]))
    shared.condense_fd_server_errors()
    shared.condense_fd_server_errors()  # idempotent: does not wrap itself
    code = compile(
        "def serve():\n    raise ConnectionResetError('peer gone')\n",
        "/usr/lib/python3.11/multiprocessing/resource_sharer.py",
        "exec",
    )
    namespace = {}
    exec(code, namespace)
    try:
        namespace["serve"]()
    except ConnectionResetError:
        sys.excepthook(*sys.exc_info())
    assert (
        "a worker disconnected while receiving the model (ConnectionResetError)"
        in capfd.readouterr().err
    )
    assert calls == []
    try:
        raise ValueError("a real bug")
    except ValueError:
        sys.excepthook(*sys.exc_info())
    assert calls == [ValueError]


def test_describe_exit_names_the_signal():
    assert "SIGSEGV" in shared.describe_exit(-11)
    assert "code 3" in shared.describe_exit(3)
    assert "out-of-memory killer" in shared.describe_exit(-9)
