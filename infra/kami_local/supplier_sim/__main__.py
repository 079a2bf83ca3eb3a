"""Runs the supplier simulator until Ctrl-C (docs/suppliers.md). Prints its URL, alone, as
the first line on stdout; the log goes to stderr.

  python -m kami_local.supplier_sim [--port 4020] [--state-dir D] [--supplier ID=SECRET ...] [--hang-s 10]

Supplier ID's base_url is then {url}/s/ID; drive it with the control routes (/_sim/...) or
kami_local.supplier_sim.SupplierSim(url).
"""

from __future__ import annotations

import argparse
import functools
import os
import signal
import sys
import threading
from pathlib import Path

from .server import DEFAULT_HANG_S, log_line, start_supplier_sim


def _supplier(text: str) -> tuple[str, str]:
    supplier_id, sep, secret = text.partition("=")
    if not sep or not supplier_id or not secret:
        raise argparse.ArgumentTypeError(f"{text!r}: use ID=SECRET")
    return supplier_id, secret


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kami_local.supplier_sim", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("KAMI_SUPPLIER_SIM_PORT", 4020)),
                        help="0 = any free port (default 4020, or KAMI_SUPPLIER_SIM_PORT)")
    parser.add_argument("--state-dir", type=Path, help="keep state.json here (default: memory only)")
    parser.add_argument("--supplier", type=_supplier, action="append", default=[], metavar="ID=SECRET",
                        help="register a supplier at start (repeatable)")
    parser.add_argument("--hang-s", type=float, default=DEFAULT_HANG_S,
                        help=f"how long hang / apply_and_hang hold a connection (default {DEFAULT_HANG_S:g})")
    args = parser.parse_args(argv)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    sim = start_supplier_sim(port=args.port, state_dir=args.state_dir, host=args.host, suppliers=dict(args.supplier),
                             hang_s=args.hang_s, log=functools.partial(log_line, stream=sys.stderr))
    try:
        print(sim.url, flush=True)
        stop.wait()
    finally:
        sim.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
