"""Kami's local platform. Run through infra/kami (or `python -m kami_local` from infra/).

  up         moto + provision + build + run every function from template.yaml (Ctrl-C stops)
  status     what is running: instances per function, mappings, schedules
  fire NAME  fire a schedule now (event name, e.g. EveryMinute, or function id)
  invoke FN [EVENT_FILE]   invoke a function once with an event (default {})
  kill FN    kill FN's emulator during its next invocation (fault injection)
  logs [FN]  print (-f: follow) the per-function logs in .kami/logs/
  webhook ORDER_ID   send a signed Stripe checkout.session.completed (--type) for an order
  clock advance 31d | reset | show   move every running function's clock (units s, m, h, d)
  clock skew FN -10m   set one function's clock off the others' (0 takes it away)
  outbox     print what the notifier sent (moto's SES and SNS) as JSON lines
  build      cargo lambda build every function (x86_64; --release)
  provision  provision template.yaml on a moto server (see kami_local.provision)
  restore    restore the table after data loss, against AWS (docs/operations.md, Restore; kami_local.restore)
  test-e2e   run the end-to-end tests (they start their own platform)
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import requests

from . import build as builder
from . import clock
from . import provision as prov
from . import restore
from . import template as tpl
from .platform import REPO, STATE_DIR, Platform
from .processes import start_moto, stop_process

DEMO_SKU = "demo-card"


def seed(api: str, keys: int = 20) -> None:
    """The demo product and card keys, through the real admin API."""
    auth = {"Authorization": f"Bearer {prov.local_secrets()['AdminTokenSecret']}"}
    product = {"sku": DEMO_SKU, "title": "Demo card key", "price": {"amount": 990, "currency": "CNY"},
               "delivery": {"type": "card_key"}, "max_per_order": 5}
    r = requests.post(f"{api}/admin/products", json=product, headers=auth, timeout=30)
    if r.status_code not in (201, 409):
        raise RuntimeError(f"seeding the demo product failed: HTTP {r.status_code} {r.text[:300]}")
    codes = [f"DEMO-{uuid.uuid4().hex[:16].upper()}" for _ in range(keys)]
    r = requests.post(f"{api}/admin/products/{DEMO_SKU}/card-keys", json={"keys": codes}, headers=auth, timeout=60)
    if r.status_code not in (200, 201):
        raise RuntimeError(f"importing demo keys failed: HTTP {r.status_code} {r.text[:300]}")
    print(f"seeded product {DEMO_SKU} (990 CNY, max 5 per order) with {r.json().get('accepted')} card keys")


def banner(api: str, endpoint: str) -> str:
    s = prov.local_secrets()
    return f"""
Kami is running locally (Ctrl-C stops everything).
  API base URL            {api}
  admin token             {s['AdminTokenSecret']}
  Stripe webhook secret   {s['StripeWebhookSecret']}
  moto server             {endpoint}
  logs                    infra/kami logs -f      (files in .kami/logs/)

Buy a key:
  curl -s {api}/products/{DEMO_SKU}
  curl -s -X POST {api}/orders -H 'Content-Type: application/json' \\
       -H "Idempotency-Key: $(cat /proc/sys/kernel/random/uuid)" \\
       -d '{{"sku":"{DEMO_SKU}","quantity":1,"buyer":{{"email":"buyer@example.com"}}}}'
  curl -s -X POST {api}/orders/<order_id>/payments -H 'Authorization: Bearer <access_token>' \
       -H "Idempotency-Key: $(cat /proc/sys/kernel/random/uuid)" -d '{{"channel":"alipay-sandbox"}}'
  infra/kami pay <order_id>            # the sandbox pays it and notifies Kami as Alipay would
  infra/kami webhook <order_id>        # or: a signed Stripe event on the default endpoint
  curl -s {api}/orders/<order_id> -H 'Authorization: Bearer <access_token>'
Admin:
  curl -s {api}/admin/products/{DEMO_SKU} -H 'Authorization: Bearer {s['AdminTokenSecret']}'
  curl -s {api}/admin/payment-channels -H 'Authorization: Bearer {s['AdminTokenSecret']}'
  infra/kami fire EveryMinute          # run the expiry sweep now
  infra/kami fire PaymentReconcile     # ask the providers about open payments now
  infra/kami fire StockAudit           # check every product's stock counters against its keys now
"""


def start_payment_sandbox(platform, state_dir: Path):
    """The payment providers' sandbox (docs/sandbox.md), with one channel per provider
    set up in Kami through the admin API, as an operator would."""
    from .sandbox import start_sandbox
    from .sandbox.cli import put_channels

    sandbox = start_sandbox(port=0, state_dir=state_dir, kami_api=platform.url, log=platform.status)
    statuses = put_channels(platform.url, prov.local_secrets()["AdminTokenSecret"], sandbox.channel_configs())
    refused = {channel: status for channel, status in statuses.items() if status not in (200, 201)}
    if refused:
        raise RuntimeError(f"seeding the sandbox's payment channels failed: {refused}")
    return sandbox


def start_supplier_sim(platform, state_dir: Path):
    """The direct top-up suppliers' simulator (docs/suppliers.md), with supplier sim-mobile
    (a fresh secret each run) and its product set up in Kami through the admin API."""
    from . import supplier_sim

    sim = supplier_sim.start_supplier_sim(port=0, state_dir=state_dir, log=platform.status)
    try:
        supplier_sim.seed_kami(platform.url, prov.local_secrets()["AdminTokenSecret"], sim.url, secrets.token_hex(32))
    except BaseException:  # up's cleanup never sees a simulator that is not returned
        sim.stop()
        raise
    return sim


def cmd_pay(args) -> int:
    """The buyer pays the order's open payment attempt at the sandbox, which notifies Kami
    as its provider would (or loses the notification, or sends it twice)."""
    from .sandbox import cli as sandbox_cli

    state = _state(args)
    ddb = prov.client("dynamodb", state["endpoint"])
    items = ddb.query(TableName=state["resources"]["KamiTable"], ConsistentRead=True,
                      KeyConditionExpression="pk = :pk AND begins_with(sk, :attempt)",
                      ExpressionAttributeValues={":pk": {"S": f"ORDER#{args.order_id}"},
                                                 ":attempt": {"S": "ATTEMPT#"}})["Items"]
    attempts = [i for i in items if i["status"]["S"] == "pending"
                and (args.channel is None or i["channel_id"]["S"] == args.channel)]
    if not attempts:
        raise SystemExit(f"order {args.order_id} has no open payment attempt"
                         f"{' on ' + args.channel if args.channel else ''}: "
                         "open one with POST /orders/{order_id}/payments")
    attempt = max(attempts, key=lambda i: i["created_at"]["S"])
    action = json.loads(attempt.get("action", {}).get("S", "{}"))
    result = sandbox_cli.pay(None, attempt["provider"]["S"], attempt["payment_id"]["S"], lose=args.lose,
                             twice=args.twice, amount=args.amount, pay_url=action.get("url"))
    print(json.dumps(result, indent=2, ensure_ascii=False))
    return 0 if args.lose or all(n.get("accepted") for n in result.get("notifications", [])) else 1


def cmd_up(args) -> int:
    log_dir = args.log_dir
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    moto = None
    platform = None
    sandbox = None
    sim = None
    if args.no_state:
        # A platform of its own (the tests') has a clock of its own.
        os.environ.setdefault(clock.ENV, str(log_dir / "clock"))
    else:
        clock.reset()  # the running platform starts at the real time
    try:
        if args.endpoint:
            endpoint = args.endpoint
        else:
            moto, endpoint = start_moto(args.moto_port, log_dir)
        template = tpl.load(args.template or tpl.default_template())
        # The local simulators are on loopback: suppliers may point there (never in AWS).
        parameters = {"SupplierAllowPrivateUrls": "true", **prov._pairs(args.parameter)}
        provisioned, stack = prov.provision_stack(endpoint, args.template, parameters)
        if args.no_build:
            bootstraps = {lid: builder.bootstrap_path(b, args.release) for lid, b in builder.binaries(template).items()}
        else:
            try:
                bootstraps = builder.build(template, args.release)
            except subprocess.CalledProcessError as e:
                print(f"build failed ({e.returncode}); nothing started", file=sys.stderr)
                return 1
        platform = Platform(template, stack, provisioned, bootstraps, endpoint, args.port,
                            args.max_instances, args.sqs_pollers, log_dir)
        platform.start(register=not args.no_state)
        state_dir = log_dir if args.no_state else STATE_DIR
        sandbox = start_payment_sandbox(platform, state_dir / "sandbox")
        sim = start_supplier_sim(platform, state_dir / "supplier_sim")
        if args.seed:
            seed(platform.url)
        print(banner(platform.url, endpoint), flush=True)
        print(f"payment sandbox         {sandbox.url}  (channels alipay-sandbox, wechat-sandbox, stripe-sandbox)",
              flush=True)
        print(f"supplier simulator      {sim.url}  (supplier sim-mobile, product mobile-credit-50)", flush=True)
        if args.ready_file:
            Path(args.ready_file).write_text(json.dumps({"api_url": platform.url, "endpoint": endpoint,
                                                         "resources": provisioned["resources"],
                                                         "sandbox_url": sandbox.url, "supplier_sim_url": sim.url}))
        stop.wait()
        print("stopping...", flush=True)
        return 0
    finally:
        if sim is not None:
            sim.stop()
        if sandbox is not None:
            sandbox.stop()
        if platform is not None:
            platform.stop()
        if moto is not None:
            stop_process(moto)


def _state(args) -> dict:
    path = STATE_DIR / "run" / "platform.json"
    state = json.loads(path.read_text()) if path.exists() else {}
    if getattr(args, "api", None):
        state["api_url"] = args.api
    if "api_url" not in state:
        raise SystemExit("no running platform found (.kami/run/platform.json); start it with infra/up.sh")
    return state


def _show(r: requests.Response) -> int:
    print(json.dumps(r.json(), indent=2) if r.headers.get("content-type", "").startswith("application/json") else r.text)
    return 0 if r.ok else 1


def cmd_logs(args) -> int:
    log_dir = STATE_DIR / "logs"
    names = args.function or sorted(p.stem for p in log_dir.glob("*.log"))
    files = [log_dir / f"{n}.log" for n in names]
    tail = ["tail", "-n", str(args.lines)] + (["-F"] if args.follow else []) + [str(f) for f in files]
    try:
        return subprocess.call(tail)
    except KeyboardInterrupt:
        return 0


def cmd_webhook(args) -> int:
    from . import stripe_webhook

    state = _state(args)
    amount, currency = stripe_webhook.order_amount(state["endpoint"], state["resources"]["KamiTable"], args.order_id)
    event = stripe_webhook.EVENT_TYPES[args.type](args.order_id, amount, currency, args.event_id)
    # Signed at the functions' time, so it is fresh for them after `clock advance`.
    r = stripe_webhook.send(state["api_url"], event, timestamp=clock.now())
    print(f"sent {event['type']} {event['id']} for order {args.order_id} ({amount} {currency}): "
          f"HTTP {r.status_code} {r.text[:200]}")
    return 0 if r.ok else 1


def cmd_clock(args) -> int:
    try:
        if args.action == "advance":
            clock.advance(clock.parse_duration(args.duration))
        elif args.action == "reset":
            clock.reset()
        elif args.action == "skew":
            clock.skew(args.function, clock.parse_duration(args.duration, signed=True))
    except ValueError as e:
        raise SystemExit(f"kami clock: {e}") from None
    print(clock.describe(clock.offset()))
    for function, seconds in sorted(clock.skews().items()):
        print(f"  {function}: skewed {seconds:+d} s")
    if not (STATE_DIR / "run" / "platform.json").exists():
        print("no platform is running; infra/up.sh starts one at the real time (clock reset)")
    return 0


def stripe_types() -> list[str]:
    from .stripe_webhook import EVENT_TYPES

    return list(EVENT_TYPES)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kami", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="run the whole system locally")
    up.add_argument("--port", type=int, default=int(os.environ.get("KAMI_PORT", 3000)), help="API port (0 = any)")
    up.add_argument("--moto-port", type=int, default=0, help="moto server port (0 = any free port)")
    up.add_argument("--endpoint", help="use this running moto server instead of starting one")
    up.add_argument("--template", default=None)
    up.add_argument("--parameter", action="append", default=[], metavar="NAME=VALUE")
    up.add_argument("--release", action="store_true", help="build and run release binaries")
    up.add_argument("--no-build", action="store_true", help="run the last build as it is")
    up.add_argument("--max-instances", type=int, default=4, help="concurrent instances per function")
    up.add_argument("--sqs-pollers", type=int, default=2, help="concurrent batches per SQS mapping")
    up.add_argument("--seed", action="store_true", help="create the demo product and card keys")
    up.add_argument("--ready-file", help="write the API URL etc. here once everything runs")
    up.add_argument("--log-dir", type=Path, default=STATE_DIR / "logs")
    up.add_argument("--no-state", action="store_true",
                    help="do not register as the running platform (.kami/run/platform.json), e.g. in tests")

    for name in ("status", "fire", "invoke", "kill", "webhook", "pay"):
        p = sub.add_parser(name)
        p.add_argument("--api", help="platform URL (default: the running one)")
        if name == "fire":
            p.add_argument("name")
        if name in ("invoke", "kill"):
            p.add_argument("function")
        if name == "invoke":
            p.add_argument("event_file", nargs="?")
        if name == "kill":
            p.add_argument("--after-ms", type=float, default=0)
        if name == "pay":
            p.add_argument("order_id")
            p.add_argument("--channel", help="the attempt of this channel (default: the newest open one)")
            p.add_argument("--lose", action="store_true", help="pay, but send no notification (reconciliation)")
            p.add_argument("--twice", action="store_true", help="send the notification twice")
            p.add_argument("--amount", type=int, help="pay this many minor units instead (a mismatch)")
        if name == "webhook":
            p.add_argument("order_id")
            p.add_argument("--event-id", help="reuse an event id (to test deduplication)")
            p.add_argument("--type", default="checkout.session.completed", choices=sorted(stripe_types()))

    c = sub.add_parser("clock", help="move the clock of every running function (local only)")
    c.add_argument("action", choices=["advance", "reset", "show", "skew"])
    c.add_argument("args", nargs="*", help="advance: a duration (31d, 90s, 15m, 2h, 1d12h); "
                                           "skew: a function id and a signed duration (-10m)")

    sub.add_parser("outbox", help="print what the notifier sent, as JSON lines (local only)")

    logs = sub.add_parser("logs")
    logs.add_argument("function", nargs="*")
    logs.add_argument("-f", "--follow", action="store_true")
    logs.add_argument("-n", "--lines", type=int, default=50)

    b = sub.add_parser("build")
    b.add_argument("--release", action="store_true")
    sub.add_parser("provision", add_help=False)
    sub.add_parser("restore", add_help=False)
    sub.add_parser("test-e2e", add_help=False)

    args, rest = parser.parse_known_args(argv)
    if args.command == "provision":
        prov.main(rest)
        return 0
    if args.command == "restore":
        return restore.main(rest)
    if args.command == "test-e2e":
        return subprocess.call([sys.executable, "-m", "pytest", str(REPO / "tests" / "e2e"), *rest], cwd=REPO)
    if args.command == "clock":
        # argparse takes `-10m` for an option it does not know: it is the skew's duration.
        args.args, rest = [*args.args, *rest], []
        wanted = {"advance": ["duration"], "skew": ["function", "duration"]}.get(args.action, [])
        if len(args.args) != len(wanted):
            parser.error("clock advance takes a duration (e.g. 31d); clock skew a function id and a "
                         "signed duration (e.g. DeliveryWorkerFunction -10m); reset and show take none")
        for name, value in zip(wanted, args.args):
            setattr(args, name, value)
        return cmd_clock(args)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "up":
        return cmd_up(args)
    if args.command == "build":
        builder.build(tpl.load(tpl.default_template()), args.release)
        return 0
    if args.command == "logs":
        return cmd_logs(args)
    if args.command == "outbox":
        from . import outbox

        state = _state(args)
        outbox.print_lines(state["endpoint"], state["resources"]["KamiTable"])
        return 0
    if args.command == "webhook":
        return cmd_webhook(args)
    if args.command == "pay":
        return cmd_pay(args)
    api = _state(args)["api_url"]
    if args.command == "status":
        return _show(requests.get(f"{api}/_local/status", timeout=10))
    if args.command == "fire":
        return _show(requests.post(f"{api}/_local/schedules/{args.name}/fire", timeout=120))
    if args.command == "invoke":
        body = Path(args.event_file).read_bytes() if args.event_file else b"{}"
        return _show(requests.post(f"{api}/_local/functions/{args.function}/invoke", data=body, timeout=120))
    if args.command == "kill":
        return _show(requests.post(f"{api}/_local/functions/{args.function}/faults",
                                   json={"count": 1, "kill_after_ms": args.after_ms}, timeout=10))
    return 2


if __name__ == "__main__":
    sys.exit(main())
