"""SIGTERM (preemption) and SIGINT (Ctrl-C) during long work: the work
stops at its next safe point, saves its state and raises
`keras_ebm.errors.Interrupted`, which the commands print as one line.

    with interrupt.handled():
        for chunk in work:
            ...
            if interrupt.requested():
                save()
                raise interrupt.stop("the evaluation", "state saved to ...")

A second Ctrl-C stops at once (Python's own `KeyboardInterrupt`). Outside
the main thread, where Python cannot take signals, `handled` does nothing.
"""

import contextlib
import os
import shlex
import signal
import sys
import threading

from keras_ebm.errors import Interrupted

SIGNALS = (signal.SIGINT, signal.SIGTERM)
_received = []
_handled = []  # the signals the Python handler has run for
_wakeup = []  # the read end of the signal wake-up pipe inside `handled`


def requested():
    """The signal number received inside `handled`, or None.

    Also true inside a compiled TensorFlow call: Python runs signal
    handlers only in the main thread, which waits in the call, but the
    interpreter writes each signal's number to the wake-up pipe at once,
    and this reads it from any thread (e.g. a `tf.py_function`).
    """
    if not _received and _wakeup:
        try:
            arrived = os.read(_wakeup[0], 512)
        except (BlockingIOError, OSError):
            arrived = b""
        for signum in arrived:
            if signum in SIGNALS:
                _received.append(signum)
                break
    return _received[0] if _received else None


@contextlib.contextmanager
def handled():
    """Takes SIGINT and SIGTERM for the block (re-entrant: an inner block
    leaves the outer one's handlers in place)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    if signal.getsignal(signal.SIGTERM) is _on_signal:
        yield
        return
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    _received.clear()
    _handled.clear()
    read, write = os.pipe()
    for fd in (read, write):
        os.set_blocking(fd, False)
    previous_fd = signal.set_wakeup_fd(write)
    _wakeup.append(read)
    for s in SIGNALS:
        signal.signal(s, _on_signal)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        signal.set_wakeup_fd(previous_fd)
        _wakeup.clear()
        os.close(read)
        os.close(write)
        _received.clear()
        _handled.clear()


def stop(what, saved):
    """The `Interrupted` to raise once `what` has saved its state (`saved`
    says where): one line that also says how to resume."""
    signum = requested() or signal.SIGINT
    name = signal.Signals(signum).name
    return Interrupted(
        signum, f"{name}: {what} stopped; {saved}. Resume: {resume_command()}"
    )


def resume_command():
    """The command line that started this process (re-running it resumes)."""
    argv = list(sys.argv)
    if argv and argv[0].endswith(".py"):
        argv = ["python"] + argv
    return shlex.join(argv) if argv and argv[0] == "python" else "the same call"


def _on_signal(signum, frame):
    if _handled and signum == signal.SIGINT:
        raise KeyboardInterrupt  # a second Ctrl-C: stop now
    _handled.append(signum)
    if not _received:
        _received.append(signum)
    if len(_handled) == 1:
        if sys.stderr.isatty():
            print(
                f"\n{signal.Signals(signum).name} received: stopping at the next "
                "safe point and saving (Ctrl-C again to stop at once)",
                file=sys.stderr,
                flush=True,
            )
