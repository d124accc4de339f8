"""How many CPU threads torch uses: ``--threads N``, else ``$TASKVEC_THREADS``, else one per idle core.

On a CPU, torch's intra-op threads wait for each other at the end of every operation; when another
process holds a core, one of them is descheduled and the others wait for it. Measured on a 2-core machine
(``python bench/bench_threads.py``, README "Threads"): quiet, 2 threads were 1.5-1.7x faster than 1; with
one competing process, 2 threads were 1.2-1.4x SLOWER than 1. So the default ("auto") counts the cores
that are idle when the command starts — cores minus the cores other processes keep busy, sampled from
``/proc/stat`` over a quarter of a second (not the load average, which still counts this user's previous
run for a minute) — and uses that many threads, at least one.
"""

from __future__ import annotations

import logging
import os
import time

import torch

from taskvec.errors import TaskvecError

ENV_VAR = "TASKVEC_THREADS"
AUTO = "auto"

log = logging.getLogger(__name__)


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, e.g. a SLURM allocation), else all cores."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def busy_cores(interval: float = 0.25) -> float | None:
    """How many cores the machine's processes keep busy now, sampled from /proc/stat over ``interval``
    seconds (this process sleeps meanwhile, so it counts only the others); None where there is no /proc."""
    def sample() -> tuple[int, int]:
        with open("/proc/stat", encoding="ascii") as fh:
            fields = [int(x) for x in fh.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return sum(fields[:8]), idle

    try:
        total0, idle0 = sample()
        time.sleep(interval)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    elapsed = total1 - total0
    if elapsed <= 0:
        return None
    return (os.cpu_count() or 1) * (1 - (idle1 - idle0) / elapsed)


def idle_cores(cores: int | None = None, busy: float | None = None) -> int:
    """Cores not busy with other work right now: ``cores`` minus the busy ones (measured when not given;
    the 1-minute load average where /proc/stat is missing), at least 1."""
    cores = available_cores() if cores is None else cores
    if busy is None:
        busy = busy_cores()
    if busy is None:
        try:
            busy = os.getloadavg()[0]
        except (AttributeError, OSError):  # no load figure on this platform: trust the core count
            busy = 0.0
    return max(1, min(cores, cores - round(busy)))


def parse_threads(value: str | int | None, source: str = "--threads") -> int | None:
    """A thread count from an option or the environment: an integer ≥ 1, or None for "auto"."""
    if value is None:
        return None
    text = str(value).strip().lower()
    if text == AUTO:
        return None
    try:
        count = int(text)
    except ValueError:
        raise TaskvecError(f"{source} must be a whole number of threads or 'auto', got {value!r}") from None
    if count < 1:
        raise TaskvecError(f"{source} must be at least 1, got {count}")
    return count


def resolve_threads(option: str | int | None) -> tuple[int, str]:
    """The thread count to use and where it came from: the option, ``$TASKVEC_THREADS``, or auto."""
    chosen = parse_threads(option)
    if chosen is not None:
        return chosen, "--threads"
    from_env = parse_threads(os.environ.get(ENV_VAR) or None, source=f"${ENV_VAR}")
    if from_env is not None:
        return from_env, f"${ENV_VAR}"
    return idle_cores(), "auto (idle cores)"


def configure_threads(option: str | int | None) -> int:
    """Set torch's intra-op thread count from ``option`` (see :func:`resolve_threads`); returns it."""
    count, source = resolve_threads(option)
    torch.set_num_threads(count)
    log.info("using %d CPU thread(s) for torch (%s)", count, source)
    return count
