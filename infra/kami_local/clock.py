"""The local clock: an offset in seconds that every function running under the local
platform adds to the time (the functions' `LocalClock`, shared/src/adapters/clock.rs).

  infra/kami clock advance 31d    # also 90s, 15m, 2h, 1d12h
  infra/kami clock show
  infra/kami clock reset

The platform gives every function `KAMI_LOCAL_CLOCK_FILE` (runtime.py); each reads the
file whenever it asks the time, so a change applies at once to every running instance,
with no restart. The file holds one decimal integer; no file means no offset. Only the
local platform sets the variable: template.yaml never does, and a function refuses it
when it runs in AWS (see the Rust module).
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from pathlib import Path

ENV = "KAMI_LOCAL_CLOCK_FILE"
DEFAULT_FILE = Path(__file__).resolve().parents[2] / ".kami" / "run" / "clock"
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_PART = re.compile(r"(\d+)([smhd])")


def path() -> Path:
    """The clock file of the platform this process starts or talks to."""
    return Path(os.environ.get(ENV) or DEFAULT_FILE)


def parse_duration(text: str) -> int:
    """Seconds in `31d`, `90s`, `1d12h`... (units s, m, h, d)."""
    compact = text.strip().lower().replace(" ", "")
    if not compact or _PART.sub("", compact):
        raise ValueError(f"not a duration: {text!r} (use a number and a unit s, m, h or d, e.g. 31d)")
    return sum(int(n) * UNITS[unit] for n, unit in _PART.findall(compact))


def offset(file: Path | None = None) -> int:
    file = file or path()
    try:
        return int(file.read_text().strip())
    except FileNotFoundError:
        return 0


def _write(value: int, file: Path) -> None:
    """Replaces the file at once, so a function never reads half of it."""
    file.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=file.parent, prefix=".clock-")
    with os.fdopen(fd, "w") as f:
        f.write(f"{value}\n")
    os.replace(tmp, file)


def now(file: Path | None = None) -> int:
    """The functions' time, in Unix seconds."""
    return int(time.time()) + offset(file)


def advance(seconds: int, file: Path | None = None) -> int:
    """Moves the clock forward; returns the new offset."""
    if seconds < 0:
        raise ValueError("the clock only moves forward (clock reset goes back to the real time)")
    file = file or path()
    new = offset(file) + seconds
    _write(new, file)
    return new


def reset(file: Path | None = None) -> None:
    (file or path()).unlink(missing_ok=True)


def describe(seconds: int) -> str:
    """`+31d 0h 0m 0s` and the clock's time."""
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + seconds))
    return f"offset +{days}d {hours}h {minutes}m {secs}s (the functions' time is now {now})"
