"""Kami's payment sandbox: one local HTTP server that plays Alipay, WeChat Pay v3 and
Stripe as their APIs do (docs/sandbox.md).

    from kami_local.sandbox import start_sandbox, channel_configs
    sandbox = start_sandbox(port=0, state_dir=".kami/sandbox", kami_api="http://127.0.0.1:3000")
    for channel_id, body in sandbox.channel_configs().items():
        ...  # PUT {kami_api}/admin/payment-channels/{channel_id} with body
    sandbox.pay("alipay", payment_id)   # or kami_local.sandbox.cli.pay(sandbox.url, ...)
    sandbox.stop()
"""

from .keys import CHANNEL_IDS, DEFAULT_STATE_DIR, SandboxKeys, channel_configs, load_or_create
from .server import Sandbox, start_sandbox

__all__ = ["CHANNEL_IDS", "DEFAULT_STATE_DIR", "Sandbox", "SandboxKeys", "channel_configs", "load_or_create",
           "start_sandbox"]
