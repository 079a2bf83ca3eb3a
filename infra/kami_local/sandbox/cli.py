"""Playing the buyer from the command line or from Python: pay a payment at the running
sandbox, settle a WeChat Pay refund, deliver a notification again, print the channels.

  python -m kami_local.sandbox pay alipay PAYMENT_ID [--lose] [--twice] [--amount FEN]
  python -m kami_local.sandbox refund-notify OUT_REFUND_NO [--status SUCCESS|ABNORMAL|CLOSED]
  python -m kami_local.sandbox resend stripe PAYMENT_ID
  python -m kami_local.sandbox channels

The sandbox is found through `<state dir>/sandbox.json` (default .kami/sandbox), which a
running sandbox writes, unless `--sandbox URL` names it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import requests

from .keys import DEFAULT_STATE_DIR
from .server import RUN_FILE


def running_url(state_dir: Path | str = DEFAULT_STATE_DIR) -> str:
    """The URL of the sandbox running with this state dir."""
    path = Path(state_dir) / RUN_FILE
    try:
        return json.loads(path.read_text())["url"]
    except (OSError, ValueError, KeyError):
        raise RuntimeError(f"no running payment sandbox found ({path}); start it with "
                           "`python -m kami_local.sandbox` or give its URL") from None


def _base(url: str | None) -> str:
    return (url or running_url()).rstrip("/")


def _post(sandbox: str | None, route: str, body: dict, timeout: float) -> dict:
    r = requests.post(f"{_base(sandbox)}/_sandbox/{route}", json=body, timeout=timeout)
    try:
        data = r.json()
    except ValueError:
        data = {"error": r.text[:300]}
    if not r.ok:
        raise RuntimeError(f"sandbox refused {route}: HTTP {r.status_code} {data.get('error', data)}")
    return data


def pay(sandbox_url: str | None, provider: str, payment_id: str, lose: bool = False, twice: bool = False,
        amount: int | None = None, notify_url: str | None = None, pay_url: str | None = None,
        trade_status: str | None = None, timeout: float = 90) -> dict:
    """The buyer pays `payment_id` at `provider` ("alipay", "wechatpay", "stripe") and the
    provider notifies Kami (`lose`: not at all; `twice`: two deliveries of the same
    notification). `amount` (minor units) overrides what is paid. Returns what was sent
    and how Kami answered: {"trade": ..., "notifications": [{"status", "answer",
    "accepted", "event_id", "url", ...}], ...}. `sandbox_url` None: the running one."""
    return _post(sandbox_url, "pay", {"provider": provider, "payment_id": payment_id, "lose": lose, "twice": twice,
                                      "amount": amount, "notify_url": notify_url, "pay_url": pay_url,
                                      "trade_status": trade_status}, timeout)


def refund_notify(sandbox_url: str | None, out_refund_no: str, status: str = "SUCCESS", lose: bool = False,
                  twice: bool = False, timeout: float = 90) -> dict:
    """WeChat Pay settles a refund it answered PROCESSING (REFUND.SUCCESS, .ABNORMAL or .CLOSED)."""
    return _post(sandbox_url, "refund-notify", {"out_refund_no": out_refund_no, "status": status, "lose": lose,
                                                "twice": twice}, timeout)


def resend(sandbox_url: str | None, provider: str, payment_id: str, timeout: float = 90) -> dict:
    """The provider delivers the last notification of `payment_id` again (a retry)."""
    return _post(sandbox_url, "resend", {"provider": provider, "payment_id": payment_id}, timeout)


def bill(sandbox_url: str | None, provider: str, action: str, fields: dict, timeout: float = 30) -> dict:
    """Edits `provider`'s bill: `add` a line, `drop` the lines naming an id, `amend` one."""
    return _post(sandbox_url, "bill", {"provider": provider, "action": action, **fields}, timeout)


def channels(sandbox_url: str | None = None) -> dict:
    """The running sandbox's channels (`PUT /admin/payment-channels/{id}` bodies)."""
    r = requests.get(f"{_base(sandbox_url)}/_sandbox/channels", timeout=30)
    r.raise_for_status()
    return r.json()


def put_channels(kami_api: str, admin_token: str, configs: dict[str, dict], timeout: float = 30) -> dict[str, int]:
    """Stores the sandbox's channels in Kami (`PUT {kami_api}/admin/payment-channels/{id}`
    with the admin token); returns each channel's HTTP status."""
    statuses = {}
    for channel_id, body in configs.items():
        r = requests.put(f"{kami_api.rstrip('/')}/admin/payment-channels/{channel_id}", json=body, timeout=timeout,
                         headers={"Authorization": f"Bearer {admin_token}"})
        statuses[channel_id] = r.status_code
    return statuses


def _summary(result: dict) -> int:
    print(json.dumps(result, indent=2, ensure_ascii=False))
    return 0 if all(n.get("accepted") for n in result.get("notifications", [])) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kami_local.sandbox", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sandbox", help="the sandbox's URL (default: the running one)")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pay", help="the buyer pays; the provider notifies Kami")
    p.add_argument("provider", choices=["alipay", "wechatpay", "stripe"])
    p.add_argument("payment_id")
    p.add_argument("--lose", action="store_true", help="mark it paid but send no notification")
    p.add_argument("--twice", action="store_true", help="deliver the notification twice")
    p.add_argument("--amount", type=int, help="what the buyer paid, in minor units (default: what was asked)")
    p.add_argument("--notify-url", help="send the notification here instead")
    p.add_argument("--pay-url", help="open this pay URL first, as the buyer's browser does (Alipay)")
    p.add_argument("--trade-status", help="Alipay: TRADE_SUCCESS (default), TRADE_FINISHED, WAIT_BUYER_PAY, TRADE_CLOSED")
    r = sub.add_parser("refund-notify", help="WeChat Pay settles a refund held in PROCESSING")
    r.add_argument("out_refund_no")
    r.add_argument("--status", default="SUCCESS", choices=["SUCCESS", "ABNORMAL", "CLOSED"])
    r.add_argument("--lose", action="store_true")
    r.add_argument("--twice", action="store_true")
    s = sub.add_parser("resend", help="deliver a payment's last notification again")
    s.add_argument("provider", choices=["alipay", "wechatpay", "stripe"])
    s.add_argument("payment_id")
    sub.add_parser("channels", help="print the three channels' PUT /admin/payment-channels bodies")
    b = sub.add_parser("bill", help="edit a provider's bill: add a line, drop one, amend one (Stripe)")
    b.add_argument("provider", choices=["stripe", "wechatpay", "alipay"])
    b.add_argument("action", choices=["add", "drop", "amend"])
    b.add_argument("--id", help="drop/amend: a payment id, refund id, payment intent, charge or refund")
    b.add_argument("--kind", choices=["payment", "refund"], help="add: payment (default) or refund")
    b.add_argument("--amount", type=int, help="add/amend: minor units")
    b.add_argument("--status", help="amend/add a refund: succeeded, pending, failed")
    b.add_argument("--payment-id", help="add: Kami's payment id in the line's metadata")
    b.add_argument("--refund-id", help="add: Kami's refund id in the line's metadata")
    b.add_argument("--payment-intent", help="add: the payment intent the line names")
    args = parser.parse_args(argv)
    try:
        if args.command == "pay":
            return _summary(pay(args.sandbox, args.provider, args.payment_id, args.lose, args.twice, args.amount,
                                args.notify_url, args.pay_url, args.trade_status))
        if args.command == "refund-notify":
            return _summary(refund_notify(args.sandbox, args.out_refund_no, args.status, args.lose, args.twice))
        if args.command == "resend":
            return _summary(resend(args.sandbox, args.provider, args.payment_id))
        if args.command == "bill":
            fields = {name: getattr(args, name) for name in ("id", "kind", "amount", "status", "payment_id",
                                                               "refund_id", "payment_intent")
                      if getattr(args, name) is not None}
            print(json.dumps(bill(args.sandbox, args.provider, args.action, fields), indent=2))
            return 0
        print(json.dumps(channels(args.sandbox), indent=2))
        return 0
    except RuntimeError as e:
        print(e, file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
