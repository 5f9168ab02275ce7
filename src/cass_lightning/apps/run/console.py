"""What a run says and how it ends: its console copied to the run folder's log, refusals as one
named line with exit 1, and SIGINT/SIGTERM turned into a saved, resumable stop (exit 130/143).

* :func:`console_log` copies everything the run prints (stdout, stderr and Lightning's log
  lines) into ``<run>/<app>.log``; progress-bar redraws are left out of the file.
* :func:`reported_errors` wraps an app's task: a refused input (a ``ValueError`` with a named
  message, a missing file, a busy folder, a full or read-only disk...) prints ``Error: ...`` and
  exits 1; anything else keeps its traceback. ``HYDRA_FULL_ERROR=1`` prints the traceback too.
  :func:`entry_point` makes a command line Hydra cannot compose (a usage error) exit 2.
* :class:`StopSignals` catches SIGINT and SIGTERM. During ``trainer.fit`` it asks Lightning to
  stop at the end of the current batch (Lightning's loops then raise ``SIGTERMException`` and
  :class:`~cass_lightning.callbacks.LastCheckpoint` saves ``last.ckpt``); outside a fit, or on a
  second Ctrl+C, it stops at once, except inside a checkpoint save or an atomic write: a signal
  there waits until the file is whole (then the run stops as asked). The app then raises
  :class:`RunStopped`, which :func:`reported_errors` prints (with the resume command) and
  turns into exit 128 + signal.
* :func:`hold_run_folder` is how the training apps hold their folder for a run: its lock, its
  log, the overwrite check once more, and the stop signals.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import signal
import sys
import traceback
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import FrameType
from typing import IO, Any, TypeVar

from cass_lightning.io import WriteRefusedError, disk_refusal

#: ANSI sequences that move the cursor or erase: what live progress displays redraw with.
_REDRAW = re.compile(r"\x1b\[[0-9;?]*[ABCDEFGHJKSTlhsu]")
_COLOUR = re.compile(r"\x1b\[[0-9;]*m")
_LIGHTNING_LOGGERS = ("lightning.pytorch", "lightning.fabric", "lightning")
T = TypeVar("T")


class RunStopped(Exception):
    """A run stopped by SIGINT/SIGTERM; ``message`` says what was saved and how to go on."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = signum
        self.message = message

    @property
    def exit_code(self) -> int:
        return 128 + int(self.signum)


class _Tee:
    """A text stream that writes to ``stream`` and, line by line, to ``log`` (progress-bar
    redraws, i.e. lines with a carriage return or cursor moves, are kept out of the file)."""

    def __init__(self, stream: IO[str], log: IO[str]) -> None:
        self._stream, self._log, self._pending = stream, log, ""

    def write(self, text: str) -> int:
        written = self._stream.write(text)
        self._pending += text
        if "\n" in self._pending:
            *lines, self._pending = self._pending.split("\n")
            kept = [_COLOUR.sub("", line) for line in lines if not _is_redraw(line)]
            if kept:
                self._log.write("\n".join(kept) + "\n")
                self._log.flush()
        return written

    def flush(self) -> None:
        self._stream.flush()

    def close_line(self) -> None:
        if self._pending and not _is_redraw(self._pending):
            self._log.write(_COLOUR.sub("", self._pending) + "\n")
        self._pending = ""

    def __getattr__(self, name: str) -> Any:  # isatty, encoding, fileno...: the console's
        return getattr(self._stream, name)


def _is_redraw(line: str) -> bool:
    return "\r" in line or _REDRAW.search(line) is not None


@contextlib.contextmanager
def console_log(path: Path, enabled: bool = True) -> Iterator[None]:
    """Copy stdout, stderr and Lightning's log lines into ``path`` (appended) while inside.

    A refusal or stop that ends the block is written to the file as its last line, so the log
    says how the run ended even though the message is printed later, by the app.
    """
    if not enabled:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as log:
        out, err = _Tee(sys.stdout, log), _Tee(sys.stderr, log)
        saved = (sys.stdout, sys.stderr)
        moved = []
        for name in _LIGHTNING_LOGGERS:
            for handler in logging.getLogger(name).handlers:
                if type(handler).__name__ == "StreamHandler":
                    moved.append((handler, handler.setStream(err)))
        sys.stdout, sys.stderr = out, err
        try:
            yield
        except BaseException as exc:
            ending = exc.message if isinstance(exc, RunStopped) else refusal_message(exc)
            if ending:
                err.close_line()
                log.write(f"{'' if isinstance(exc, RunStopped) else 'Error: '}{ending}\n")
            raise
        finally:
            out.close_line()
            err.close_line()
            sys.stdout, sys.stderr = saved
            for handler, stream in moved:
                handler.setStream(stream)


# ----------------------------------------------------------------------------- refusals
def _refusal_types() -> tuple[type[BaseException], ...]:
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    from cass_lightning.apps.run.resume import ResumeError
    from cass_lightning.apps.run.runfolder import RunFolderBusy
    from cass_lightning.encoders import HubUnreachableError

    return (
        ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError,
        FloatingPointError, ResumeError, RunFolderBusy, HubUnreachableError, WriteRefusedError,
        MisconfigurationException,
    )  # fmt: skip


def refusal_message(err: BaseException) -> str | None:
    """The one-line message of a refused input or a refused write, else ``None`` (a bug, or
    something unexpected: keep its traceback). Hydra's ``InstantiationException`` is looked
    through to the error the constructor raised."""
    from hydra.errors import InstantiationException

    while isinstance(err, InstantiationException) and err.__cause__ is not None:
        err = err.__cause__
    if isinstance(err, OSError) and not isinstance(err, WriteRefusedError):
        refused = disk_refusal(err)
        if refused is not None:
            return refused
    if isinstance(err, _refusal_types()):
        text = str(err.args[1] if isinstance(err, WriteRefusedError) else err).strip()
        return text or type(err).__name__
    return None


_task_started = False


def mark_task_started() -> None:
    """Say that the task ran (e.g. as cluster jobs), so exit 1 stays 1 (not a usage error)."""
    global _task_started
    _task_started = True


def entry_point(hydra_main: Callable[..., T]) -> Callable[..., T]:
    """Wrap a ``@hydra.main`` function so a usage error exits 2: Hydra exits 1 for a command
    line it cannot compose (unknown key or group, malformed override) before the task runs."""

    @functools.wraps(hydra_main)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            return hydra_main(*args, **kwargs)
        except SystemExit as exit_:
            if exit_.code == 1 and not _task_started:
                raise SystemExit(2) from None
            raise

    return wrapper


@contextlib.contextmanager
def reported_errors() -> Iterator[None]:
    """Turn a refusal into ``Error: <message>`` on stderr and exit 1, and a stop by signal into
    its message and exit 128 + signal; anything else passes through with its traceback."""
    global _task_started
    _task_started = True
    try:
        yield
    except RunStopped as stop:
        print(stop.message, file=sys.stderr)
        raise SystemExit(stop.exit_code) from None
    except Exception as err:
        message = refusal_message(err)
        if message is None:
            raise
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            traceback.print_exc()
        print(f"Error: {message}", file=sys.stderr)
        raise SystemExit(1) from None


# ----------------------------------------------------------------------------- signals
class StopSignals:
    """SIGINT/SIGTERM handlers for one run (a context manager; main thread only).

    ``trainer``: set it before ``trainer.fit``. While Lightning's own signal handling is active
    (during a fit or test), a first signal only asks Lightning to stop at the end of the current
    batch; otherwise, and on a second SIGINT, :class:`RunStopped` is raised at once.
    """

    def __init__(self, requeue_signals: tuple[int, ...] = ()) -> None:
        self.received: int | None = None
        self.count = 0
        self.trainer: Any = None
        self._previous: dict[int, Any] = {}
        self._pid = os.getpid()
        self._requeue_signals = tuple(requeue_signals)
        self._fitted = False

    def __enter__(self) -> StopSignals:
        import threading

        if threading.current_thread() is threading.main_thread():
            self._pid = os.getpid()
            for signum in (signal.SIGINT, signal.SIGTERM, *self._requeue_signals):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    @property
    def requeue_asked(self) -> bool:
        """Whether the stop came from a scheduler's warning signal (SIGUSR1/SIGUSR2 in a SLURM
        job: preemption or the time limit is near), which asks for a save and a requeue."""
        return self.received is not None and self.received in self._requeue_signals

    def previous_handler(self, signum: int) -> Any:
        """The handler ``signum`` had before this run's (e.g. submitit's requeue handler)."""
        return self._previous.get(signum)

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            # A scheduler's warning signal after the run has left (its work done, or its stop
            # and requeue handled) has nothing left to save: ignored, not the default action
            # that would kill a finished job (and a handler in Python is reset to that default
            # while the interpreter exits).
            signal.signal(signum, signal.SIG_IGN if signum in self._requeue_signals else handler)
        self._previous = {}

    def _training_over(self) -> bool:
        """Whether the fit has no training step left (its export, test or teardown runs, or
        ``fit`` has returned): a stop at the end of a batch can no longer come, and a requeue
        would only repeat finished work."""
        return self._fitted or _no_step_left(self.trainer)

    def fitted(self) -> None:
        """Called once ``trainer.fit`` has returned: what follows (a test, the export, the
        records) is not worth a requeue, so a warning signal is ignored from now on."""
        self._fitted = True

    def _lightning_listens(self) -> bool:
        connector = getattr(self.trainer, "_signal_connector", None)
        # Lightning registers its handlers (and keeps the ones it replaced) for a fit or test.
        return connector is not None and bool(getattr(connector, "_original_handlers", None))

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if os.getpid() != self._pid:
            # A DataLoader worker forked with this handler (a terminal's Ctrl-C and a
            # scheduler's SIGTERM reach the whole process group): the run's own process saves
            # and stops, then shuts the workers down; a worker that stopped first would only
            # break the batch the run is finishing.
            return
        if signum in self._requeue_signals and self._training_over():
            with contextlib.suppress(Exception):  # a print interrupted by this very signal
                print(f"\nReceived {signal.Signals(signum).name} after the training had finished: "
                      "ignored (the run only tests, exports and writes its records now)",
                      file=sys.stderr, flush=True)  # fmt: skip
            return
        if _in_save(frame):
            self._defer(signum)
            return
        self.count += 1
        self.received = self.received or signum
        if self._lightning_listens() and not (signum == signal.SIGINT and self.count > 1):
            # Lightning checks this flag at the end of every batch and raises SIGTERMException.
            self.trainer._signal_connector.received_sigterm = True
            with contextlib.suppress(Exception):  # a print interrupted by this very signal
                print(
                    f"\nReceived {signal.Signals(signum).name}: stopping after this batch "
                    "(press Ctrl+C again to stop at once, without saving)",
                    file=sys.stderr,
                )
            return
        name = signal.Signals(signum).name
        raise RunStopped(signum, f"Stopped by {name} before any state could be saved.")

    def _defer(self, signum: int) -> None:
        """A signal during a checkpoint save: raising inside ``torch.save`` would surface as an
        unrelated error (exit 1) with the save abandoned. During a fit, Lightning is asked to
        stop (it does once the save is done, and the app exits 128 + signal); elsewhere the
        signal is sent again shortly, to be acted on when the save has finished."""
        self.received = self.received or signum
        if self._lightning_listens():
            self.count = max(self.count, 1)
            self.trainer._signal_connector.received_sigterm = True
            return
        import threading

        timer = threading.Timer(0.2, os.kill, (self._pid, signum))
        timer.daemon = True
        timer.start()

    @property
    def name(self) -> str:
        return signal.Signals(self.received or signal.SIGTERM).name


def _no_step_left(trainer: Any) -> bool:
    """Whether a fit has reached its step or epoch limit or was told to stop (read without
    ``fit_loop.done``, which logs and updates the loop's counters)."""
    loop = getattr(trainer, "fit_loop", None)
    if loop is None:
        return False
    try:
        steps, max_steps = loop.epoch_loop.global_step, loop.max_steps
        epochs, max_epochs = loop.epoch_progress.current.processed, loop.max_epochs
        stopping = bool(trainer.should_stop)
    except (AttributeError, TypeError):  # not a Lightning trainer as this version has it
        return False
    return (
        stopping
        or (max_steps is not None and max_steps >= 0 and steps >= max_steps)
        or (max_epochs is not None and max_epochs >= 0 and epochs >= max_epochs)
    )


#: Functions that write a checkpoint or an atomic file: a signal arriving inside one waits.
_SAVES = {"atomic_write", "save_checkpoint", "_save_checkpoint"}


def _in_save(frame: FrameType | None) -> bool:
    """Whether the interrupted code is inside a checkpoint save or an atomic write."""
    while frame is not None:
        if frame.f_code.co_name in _SAVES:
            return True
        frame = frame.f_back
    return False


@contextlib.contextmanager
def hold_run_folder(
    folder: Path, log_name: str, kept: Iterable[str], hint: str = "", fresh: bool = True
) -> Iterator[StopSignals]:
    """A training app's hold on its run folder while inside: the lock (``claim_run_folder``),
    the console copied to ``<folder>/<log_name>``, the overwrite check again now that no other
    run can start here (not when resuming in place, ``fresh=False``), and the SIGINT/SIGTERM
    handlers, yielded (a :class:`StopSignals`) for the app to hand its trainer."""
    from cass_lightning.apps.cluster.job import current_job
    from cass_lightning.apps.run.common import refuse_to_overwrite
    from cass_lightning.apps.run.runfolder import claim_run_folder, is_rank_zero

    # In a SLURM job the scheduler's warning signals (the launcher's SIGUSR2, Lightning users'
    # SIGUSR1) stop the run like SIGTERM, and the app then requeues the job (docs/cluster.md).
    requeue = (signal.SIGUSR1, signal.SIGUSR2) if current_job() is not None else ()
    with claim_run_folder(folder), console_log(folder / log_name, is_rank_zero()):
        if fresh:
            refuse_to_overwrite(folder, kept, hint)
        with StopSignals(requeue) as stop:
            yield stop
