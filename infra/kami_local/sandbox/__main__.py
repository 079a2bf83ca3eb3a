"""Runs the payment sandbox until Ctrl-C, or plays the buyer (see cli.py):

  python -m kami_local.sandbox [--port 4010] [--state .kami/sandbox] [--kami-api http://127.0.0.1:3000]
  python -m kami_local.sandbox pay|refund-notify|resend|channels|bill ...
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from pathlib import Path

from . import cli
from .keys import DEFAULT_STATE_DIR
from .server import start_sandbox


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and (argv[0] in ("pay", "refund-notify", "resend", "channels", "bill") or argv[0] == "--sandbox"):
        return cli.main(argv)
    parser = argparse.ArgumentParser(prog="python -m kami_local.sandbox", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("KAMI_SANDBOX_PORT", 4010)),
                        help="0 = any free port (default 4010, or KAMI_SANDBOX_PORT)")
    parser.add_argument("--state", type=Path, default=DEFAULT_STATE_DIR,
                        help="keys, trades and sandbox.json live here (default .kami/sandbox)")
    parser.add_argument("--kami-api", help="Kami's API base URL (Stripe's webhook goes to "
                                           "{kami_api}/webhooks/stripe/stripe-sandbox)")
    parser.add_argument("--print-channels", action="store_true",
                        help="print the channels' PUT /admin/payment-channels bodies once started")
    args = parser.parse_args(argv)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    sandbox = start_sandbox(port=args.port, state_dir=args.state, kami_api=args.kami_api, host=args.host)
    try:
        if args.print_channels:
            print(json.dumps(sandbox.channel_configs(), indent=2), flush=True)
        stop.wait()
    finally:
        sandbox.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
