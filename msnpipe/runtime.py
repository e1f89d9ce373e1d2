"""What every command shares: the error type for bad input, logging set-up, device choice.

A command raises `UserError` (or a subclass) for anything the user can fix — a bad path,
a value out of range, a store built from other inputs — and its `main` turns exactly these
into one line and exit status 1; so it does with the faults every command can meet (a full
disk or quota, a read-only file system: exit 1; Ctrl-C: exit 130; SIGTERM: exit 143), each
naming the way out. Every other exception keeps its traceback.

    from msnpipe.runtime import UserError, setup_logging, pick_device
"""

from __future__ import annotations

import errno
import logging
import signal
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported only where a device is picked
    import torch

LOGGERS = ("shard", "embed", "probe", "bench", "msnpipe")
LOG_FORMAT = "%(asctime)s %(name)s: %(message)s"


class UserError(Exception):
    """Bad input or state the user can fix: printed as one line, exit status 1."""


class Terminated(BaseException):
    """SIGTERM arrived (raised in the main thread, so `finally` blocks and pools shut down)."""


DISK_FULL = {errno.ENOSPC: "free space", errno.EDQUOT: "free space (or raise the quota)",
             errno.EFBIG: "free space (or raise the file-size limit)",
             errno.EROFS: "write to a writable file system"}
RERUN = "rerun the same command to go on: what was finished is kept, nothing half-written is read as whole"


def _terminate(signum, frame) -> None:
    raise Terminated


def few(names: list[str], limit: int = 5) -> str:
    """'a, b, c and 7 more' (or 'none') for naming things in one line."""
    if not names:
        return "none"
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def difference(first: str, a: list[str], second: str, *, b: list[str]) -> str:
    """'only in A: x, y; only in B: z' for two lists of names."""
    return (f"only in {first}: {few(sorted(set(a) - set(b)))}; "
            f"only in {second}: {few(sorted(set(b) - set(a)))}")


def setup_logging(level: int = logging.INFO) -> None:
    """Timestamped lines on stderr for msnpipe's loggers; other libraries stay at WARNING."""
    logging.basicConfig(format=LOG_FORMAT)
    for name in LOGGERS:
        logging.getLogger(name).setLevel(level)


def command(parse: Callable[[list[str] | None], Any], run: Callable[[Any], Any], argv: list[str] | None,
            *, logger: str, done: Callable[[Any, Any], None] | None = None) -> int:
    """A command's main: set up logging, parse `argv`, run; a UserError is one line on `logger`
    and exit status 1, anything else keeps its traceback. `done(args, result)` reports success."""
    setup_logging()
    args = parse(argv)
    log = logging.getLogger(logger)
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if main_thread else None
    try:
        result = run(args)
    except UserError as e:
        log.error("%s", e)
        return 1
    except KeyboardInterrupt:
        log.error("interrupted (Ctrl-C); %s", RERUN)
        return 130
    except Terminated:
        log.error("terminated (SIGTERM); %s", RERUN)
        return 143
    except OSError as e:
        if e.errno not in DISK_FULL:
            raise
        log.error("%s: %s; %s and %s", e.filename or "writing", e.strerror, DISK_FULL[e.errno], RERUN)
        return 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    if done is not None:
        done(args, result)
    return result if type(result) is int else 0  # a run may return its exit status


def installed(module: str) -> bool:
    """Whether `module` (dotted, as `nvidia.dali`) can be imported, without importing it."""
    import importlib.util

    top = module.split(".")[0]
    return importlib.util.find_spec(top) is not None and importlib.util.find_spec(module) is not None


def cuda_available() -> bool:
    """Whether torch sees a GPU; without NVIDIA's driver files, answered without importing torch."""
    import os

    if not any(os.path.exists(p) for p in ("/dev/nvidiactl", "/proc/driver/nvidia")):
        return False
    import torch

    return torch.cuda.is_available()


def pick_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """`auto` is this rank's GPU when CUDA is there, else the CPU; `cuda` is `cuda:<local_rank>`.
    Accepts auto | cpu | cuda | cuda:N; anything else, or CUDA without a GPU, is a UserError."""
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        name = f"cuda:{local_rank}"
    if name != "cpu" and not (name.startswith("cuda:") and name[5:].isdigit()):
        raise UserError(f"--device {name!r}: expected auto, cpu, cuda or cuda:N")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available on this machine")
    if name.startswith("cuda") and int(name[5:]) >= torch.cuda.device_count():
        raise UserError(f"--device {name}: this machine has {torch.cuda.device_count()} GPU(s)")
    return torch.device(name)
