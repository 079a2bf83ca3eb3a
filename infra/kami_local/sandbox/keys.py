"""The sandbox's LOCAL TEST KEYS, and the payment channels that use them.

Generated once into `<state dir>/keys.json` (mode 0600) and reused, so a channel that
Kami stored keeps working across restarts of the sandbox. Nothing here is a real
account: every id and key is made up on this machine, and every name says so.

- Alipay: the merchant's app key pair (Kami signs requests with the private key; the
  sandbox verifies with the public key) and the sandbox's own "Alipay" key pair (the
  sandbox signs answers and notifications; Kami verifies with the public key).
- WeChat Pay: the merchant key pair with its certificate serial number (Kami signs
  `Authorization`), the platform key pair with its serial number and a self-signed
  platform certificate (the sandbox signs every answer and notification), the APIv3 key
  (32 characters; notifications' `resource` is encrypted under it).
- Stripe: a test-mode secret key (Kami's Bearer token) and the webhook endpoint's
  signing secret (`whsec_...`).

`channel_configs(base_url)` gives the bodies of `PUT /admin/payment-channels/{id}` for
the three sandbox channels.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import secrets
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from .common import digits, token

DEFAULT_STATE_DIR = Path(__file__).resolve().parents[3] / ".kami" / "sandbox"
KEYS_FILE = "keys.json"

CHANNEL_IDS = {"alipay": "alipay-sandbox", "wechatpay": "wechat-sandbox", "stripe": "stripe-sandbox"}


@dataclasses.dataclass(frozen=True)
class SandboxKeys:
    # Alipay
    alipay_app_id: str
    alipay_seller_id: str
    alipay_app_private_key: str  # the merchant's (Kami's), PEM PKCS#8
    alipay_app_public_key: str  # PEM SubjectPublicKeyInfo
    alipay_private_key: str  # the sandbox's "Alipay" key, PEM PKCS#8
    alipay_public_key: str
    # WeChat Pay v3
    wechat_mchid: str
    wechat_appid: str
    wechat_merchant_serial_no: str
    wechat_merchant_private_key: str
    wechat_merchant_public_key: str
    wechat_platform_serial_no: str
    wechat_platform_private_key: str
    wechat_platform_public_key: str
    wechat_platform_certificate: str  # self-signed, serial number = wechat_platform_serial_no
    wechat_apiv3_key: str
    # Stripe
    stripe_account: str
    stripe_secret_key: str
    stripe_publishable_key: str
    stripe_webhook_secret: str

    def to_json(self) -> dict:
        return {"_comment": "LOCAL TEST KEYS of Kami's payment sandbox (infra/kami_local/sandbox). "
                            "Made up on this machine; no provider knows them. Never use them anywhere else.",
                **dataclasses.asdict(self)}

    @classmethod
    def from_json(cls, data: dict) -> "SandboxKeys":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def _rsa_pair() -> tuple[rsa.RSAPrivateKey, str, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return key, private, public


def _serial() -> str:
    """A certificate serial number as WeChat Pay writes it: 40 upper-case hex digits
    (below 2**159, so it is also a valid X.509 serial)."""
    return f"{((secrets.randbelow(7) + 1) << 156) | secrets.randbits(156):040X}"


def _platform_certificate(key: rsa.RSAPrivateKey, serial_no: str) -> str:
    name = x509.Name([
        x509.NameAttribute(NameOID.COUNTRY_NAME, "CN"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Kami payment sandbox (LOCAL TEST)"),
        x509.NameAttribute(NameOID.COMMON_NAME, "WeChat Pay platform certificate (LOCAL TEST)"),
    ])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(int(serial_no, 16))
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=5 * 365))
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def generate() -> SandboxKeys:
    _, app_private, app_public = _rsa_pair()
    _, ali_private, ali_public = _rsa_pair()
    _, mch_private, mch_public = _rsa_pair()
    platform_key, plat_private, plat_public = _rsa_pair()
    platform_serial = _serial()
    return SandboxKeys(
        alipay_app_id=digits(16, "9021"),  # Alipay's sandbox apps are 16 digits starting 9021
        alipay_seller_id=digits(16, "2088"),
        alipay_app_private_key=app_private,
        alipay_app_public_key=app_public,
        alipay_private_key=ali_private,
        alipay_public_key=ali_public,
        wechat_mchid=digits(10, "19"),
        wechat_appid="wx" + secrets.token_hex(8),
        wechat_merchant_serial_no=_serial(),
        wechat_merchant_private_key=mch_private,
        wechat_merchant_public_key=mch_public,
        wechat_platform_serial_no=platform_serial,
        wechat_platform_private_key=plat_private,
        wechat_platform_public_key=plat_public,
        wechat_platform_certificate=_platform_certificate(platform_key, platform_serial),
        wechat_apiv3_key=token(32),
        stripe_account="acct_" + token(16),
        stripe_secret_key="sk_test_kamisandbox" + token(40),
        stripe_publishable_key="pk_test_kamisandbox" + token(40),
        stripe_webhook_secret="whsec_kamisandbox" + token(32),
    )


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def load_or_create(state_dir: Path | str | None) -> SandboxKeys:
    """The keys stored in `state_dir` (made and stored there on first use); fresh keys in
    memory when `state_dir` is None."""
    if state_dir is None:
        return generate()
    path = Path(state_dir) / KEYS_FILE
    if path.exists():
        return SandboxKeys.from_json(json.loads(path.read_text()))
    keys = generate()
    _write_private(path, json.dumps(keys.to_json(), indent=2) + "\n")
    return keys


def channel_configs(sandbox_base_url: str, state_dir: Path | str | None = DEFAULT_STATE_DIR,
                    keys: SandboxKeys | None = None) -> dict[str, dict]:
    """The three sandbox channels as `PUT /admin/payment-channels/{channel_id}` bodies,
    keyed by channel id (`alipay-sandbox`, `wechat-sandbox`, `stripe-sandbox`).

    `sandbox_base_url` is where Kami reaches the sandbox (e.g. http://127.0.0.1:4010);
    the keys are those of `state_dir` (the running sandbox's) unless given."""
    keys = keys or load_or_create(state_dir)
    base = sandbox_base_url.rstrip("/")
    common = {"enabled": True, "min_amount": 1, "max_amount": 5_000_000}
    return {
        CHANNEL_IDS["alipay"]: {
            "provider": "alipay", "display_name": "Alipay (sandbox)", "currencies": ["CNY"], "priority": 10,
            **common,
            "config": {
                "app_id": keys.alipay_app_id,
                "app_private_key": keys.alipay_app_private_key,
                "alipay_public_keys": [keys.alipay_public_key],
                "gateway_url": f"{base}/alipay/gateway.do",
            },
        },
        CHANNEL_IDS["wechatpay"]: {
            "provider": "wechatpay", "display_name": "WeChat Pay (sandbox)", "currencies": ["CNY"], "priority": 20,
            **common,
            "config": {
                "mchid": keys.wechat_mchid,
                "appid": keys.wechat_appid,
                "merchant_serial_no": keys.wechat_merchant_serial_no,
                "merchant_private_key": keys.wechat_merchant_private_key,
                "apiv3_key": keys.wechat_apiv3_key,
                "platform_public_keys": [{"serial_no": keys.wechat_platform_serial_no,
                                          "public_key": keys.wechat_platform_public_key}],
                "api_base_url": f"{base}/wechatpay",
            },
        },
        CHANNEL_IDS["stripe"]: {
            "provider": "stripe", "display_name": "Stripe (sandbox)", "currencies": ["CNY", "USD", "EUR"],
            "priority": 30, **common,
            "config": {
                "secret_key": keys.stripe_secret_key,
                "webhook_secrets": [keys.stripe_webhook_secret],
                "api_base_url": f"{base}/stripe",
            },
        },
    }
