"""The local clock: an offset in seconds that every function running under the local
platform adds to the time (the functions' `LocalClock`, shared/src/adapters/clock.rs).

  infra/kami clock advance 31d    # also 90s, 15m, 2h, 1d12h
  infra/kami clock show
  infra/kami clock reset                               # also takes every skew back
  infra/kami clock skew DeliveryWorkerFunction -10m   # one function's clock off the others'

Skew: the platform also gives each function `KAMI_LOCAL_SKEW_FILE`, a file of its own
beside the shared one (`clock.skew.<FunctionId>`) whose offset, negative for a clock
behind, is added to the shared offset. The fault suite uses it for clocks that disagree
between functions (docs/reliability.md, section 4).

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
SKEW_ENV = "KAMI_LOCAL_SKEW_FILE"
DEFAULT_FILE = Path(__file__).resolve().parents[2] / ".kami" / "run" / "clock"
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_PART = re.compile(r"(\d+)([smhd])")


def path() -> Path:
    """The clock file of the platform this process starts or talks to."""
    return Path(os.environ.get(ENV) or DEFAULT_FILE)


def skew_path(function: str, file: Path | None = None) -> Path:
    """The skew file of one function (its template id), beside the shared clock file."""
    if not re.fullmatch(r"[A-Za-z0-9]+", function):
        raise ValueError(f"not a function id: {function!r}")
    file = file or path()
    return file.with_name(f"{file.name}.skew.{function}")


def parse_duration(text: str, signed: bool = False) -> int:
    """Seconds in `31d`, `90s`, `1d12h`... (units s, m, h, d); `-10m` too when `signed`."""
    compact = text.strip().lower().replace(" ", "")
    sign = 1
    if signed and compact.startswith("-"):
        sign, compact = -1, compact[1:]
    if not compact or _PART.sub("", compact):
        raise ValueError(f"not a duration: {text!r} (use a number and a unit s, m, h or d, e.g. 31d)")
    return sign * sum(int(n) * UNITS[unit] for n, unit in _PART.findall(compact))


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


def skew(function: str, seconds: int, file: Path | None = None) -> None:
    """Sets one function's clock `seconds` off the shared one (0 takes the skew away)."""
    target = skew_path(function, file)
    if seconds:
        _write(seconds, target)
    else:
        target.unlink(missing_ok=True)


def skews(file: Path | None = None) -> dict[str, int]:
    """Every function's skew, by function id."""
    file = file or path()
    if not file.parent.is_dir():
        return {}
    prefix = f"{file.name}.skew."
    return {p.name[len(prefix):]: offset(p) for p in file.parent.glob(f"{prefix}*")}


def reset(file: Path | None = None) -> None:
    """Back to the real time: the shared offset and every skew."""
    file = file or path()
    for function in skews(file):
        skew(function, 0, file)
    file.unlink(missing_ok=True)


def describe(seconds: int) -> str:
    """`+31d 0h 0m 0s` and the clock's time."""
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + seconds))
    return f"offset +{days}d {hours}h {minutes}m {secs}s (the functions' time is now {now})"
