"""Kami's supplier simulator: one local HTTP server that plays upstream suppliers of direct
top-ups speaking Kami's `http_json` protocol, each under `/s/{supplier_id}`, told by
control routes how to behave (docs/suppliers.md).

    from kami_local.supplier_sim import start_supplier_sim, SupplierSim
    sim = start_supplier_sim(port=0, state_dir=None, suppliers={"acme": "s3cret"})
    ...  # Kami's supplier acme: base_url sim.base_url("acme"), secret "s3cret"
    SupplierSim(sim.url).script("acme", ["hang", "success"], account="13800138000")
    sim.stop()
"""

from .client import DEMO_PRODUCT, DEMO_SKU, DEMO_SUPPLIER, SimRefused, SupplierSim, seed_kami, supplier_config
from .protocol import SIGNATURE_HEADER, TIMESTAMP_HEADER, check, sign, signed_headers
from .server import BEHAVIOURS, Simulator, start_supplier_sim

__all__ = ["BEHAVIOURS", "DEMO_PRODUCT", "DEMO_SKU", "DEMO_SUPPLIER", "SIGNATURE_HEADER", "SimRefused", "Simulator",
           "SupplierSim", "TIMESTAMP_HEADER", "check", "seed_kami", "sign", "signed_headers", "start_supplier_sim",
           "supplier_config"]
