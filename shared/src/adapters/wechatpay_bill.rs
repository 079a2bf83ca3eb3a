//! WeChat Pay's trade bill (交易账单, `GET /v3/bill/tradebill?bill_date=&bill_type=ALL`
//! → `download_url`, `hash_type`, `hash_value`; then the file). The file is CSV: a header
//! row of Chinese column names, one row per trade or refund whose every field starts with
//! a backtick (so spreadsheets keep long numbers as text), then a summary header
//! (`总交易单数,...`) and its row. Amounts are yuan with two decimals.

use crate::domain::money::Money;
use crate::error::{Error, Result};
use crate::ports::payment::{BillLine, BillLineKind, BillLineStatus};

const PROVIDER: &str = "wechatpay";

fn bad(message: &str) -> Error {
    Error::Upstream {
        system: PROVIDER,
        message: format!("WeChat Pay's bill {message}"),
    }
}

/// Checks the file against the hash the (verified) bill answer named; WeChat Pay uses
/// SHA1.
pub fn check_hash(file: &[u8], hash_type: &str, hash_value: &str) -> Result<()> {
    if !hash_type.eq_ignore_ascii_case("SHA1") {
        return Err(bad(&format!("has an unknown hash type {hash_type}")));
    }
    let digest = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, file);
    if hex::encode(digest.as_ref()).eq_ignore_ascii_case(hash_value) {
        Ok(())
    } else {
        Err(bad("file does not match its hash"))
    }
}

/// The columns Kami reads, by their names in the header row.
struct Columns {
    transaction_id: usize,
    out_trade_no: usize,
    trade_state: usize,
    currency: usize,
    order_amount: usize,
    out_refund_no: usize,
    refund_amount: usize,
    refund_status: usize,
}

impl Columns {
    fn of(header: &[String]) -> Result<Self> {
        let at = |name: &str| {
            super::bill_csv::column(header, name, |name| bad(&format!("has no column {name}")))
        };
        Ok(Columns {
            transaction_id: at("微信订单号")?,
            out_trade_no: at("商户订单号")?,
            trade_state: at("交易状态")?,
            currency: at("货币种类")?,
            order_amount: at("订单金额")?,
            out_refund_no: at("商户退款单号")?,
            refund_amount: at("申请退款金额")?,
            refund_status: at("退款状态")?,
        })
    }
}

/// The bill's trades and refunds as bill lines. A trade row (`SUCCESS`) is a payment of
/// its order amount; a refund row (`REFUND`) a refund of the amount asked, its status
/// `SUCCESS`, `PROCESSING` (pending) or anything else (failed); other rows (`REVOKED`)
/// moved no money.
pub fn parse_trade_bill(file: &[u8]) -> Result<Vec<BillLine>> {
    let clean = |value: &str| {
        let value = value.trim_start_matches('\u{feff}').trim();
        value.trim_start_matches('`').trim().to_owned()
    };
    let rows = super::bill_csv::rows(file, false, clean, || bad("is not CSV"))?;
    let Some((header, rows)) = rows.split_first() else {
        return Ok(Vec::new());
    };
    let columns = Columns::of(header)?;
    let mut lines = Vec::new();
    for row in rows {
        if row.first().is_some_and(|first| first == "总交易单数") {
            break;
        }
        let get = |at: usize| row.get(at).map(String::as_str).unwrap_or_default();
        let kind = match get(columns.trade_state) {
            "SUCCESS" => BillLineKind::Payment,
            "REFUND" => BillLineKind::Refund,
            _ => continue,
        };
        let (amount, status, refund_id) = match kind {
            BillLineKind::Payment => (get(columns.order_amount), BillLineStatus::Succeeded, None),
            BillLineKind::Refund => (
                get(columns.refund_amount),
                match get(columns.refund_status) {
                    "SUCCESS" => BillLineStatus::Succeeded,
                    "PROCESSING" => BillLineStatus::Pending,
                    _ => BillLineStatus::Failed,
                },
                Some(get(columns.out_refund_no).to_owned()).filter(|id| !id.is_empty()),
            ),
        };
        let amount = super::alipay::parse_yuan(amount)
            .ok_or_else(|| bad(&format!("has an amount that is not yuan: {amount:?}")))?;
        let currency = crate::domain::money::parse_currency(get(columns.currency))
            .map_err(|_| bad("has a row without a currency"))?;
        let named = |at: usize| Some(get(at).to_owned()).filter(|id| !id.is_empty());
        lines.push(BillLine {
            kind,
            provider_ref: named(columns.transaction_id),
            payment_id: named(columns.out_trade_no),
            refund_id,
            amount: Money { amount, currency },
            status,
        });
    }
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bill as WeChat Pay's documentation shows one: a payment, a refund of part of it
    /// still processing, a revoked trade, then the summary.
    const BILL: &str = "\u{feff}交易时间,公众账号ID,商户号,特约商户号,设备号,微信订单号,商户订单号,用户标识,交易类型,交易状态,付款银行,货币种类,应结订单金额,代金券金额,微信退款单号,商户退款单号,退款金额,充值券退款金额,退款类型,退款状态,商品名称,商户数据包,手续费,费率,订单金额,申请退款金额,费率备注\r\n\
`2026-12-01 10:00:00,`wxd678efh567hg6787,`1230000109,`0,`,`4200000001202612010000000001,`01ORDERAAAAAAAAAAAAAAAAAAABCD,`oUpF8uMuAJO_M2pxb1Q9zNjWeS6o,`NATIVE,`SUCCESS,`OTHERS,`CNY,`9.90,`0.00,`0,`0,`0.00,`0.00,`,`,`Demo card,`,`0.06000,`0.60%,`9.90,`0.00,`\r\n\
`2026-12-01 11:00:00,`wxd678efh567hg6787,`1230000109,`0,`,`4200000001202612010000000001,`01ORDERAAAAAAAAAAAAAAAAAAABCD,`oUpF8uMuAJO_M2pxb1Q9zNjWeS6o,`NATIVE,`REFUND,`OTHERS,`CNY,`0.00,`0.00,`50300000012026120100000001,`01ORDERAAAAAAAAAAAAAAAAAAARWXYZ,`3.00,`0.00,`ORIGINAL,`PROCESSING,`Demo card,`,`-0.02000,`0.60%,`0.00,`3.00,`\r\n\
`2026-12-01 12:00:00,`wxd678efh567hg6787,`1230000109,`0,`,`4200000001202612010000000002,`01ORDERBBBBBBBBBBBBBBBBBBBEFG,`oUpF8uMuAJO_M2pxb1Q9zNjWeS6o,`NATIVE,`REVOKED,`OTHERS,`CNY,`0.00,`0.00,`0,`0,`0.00,`0.00,`,`,`Demo card,`,`0.00000,`0.60%,`0.00,`0.00,`\r\n\
总交易单数,应结订单总金额,退款总金额,充值券退款总金额,手续费总金额,订单总金额,申请退款总金额\r\n\
`3,`9.90,`3.00,`0.00,`0.04000,`9.90,`3.00\r\n";

    #[test]
    fn reads_trades_and_refunds_and_stops_at_the_summary() {
        let lines = parse_trade_bill(BILL.as_bytes()).unwrap();
        let cny = |amount| Money {
            amount,
            currency: "CNY".into(),
        };
        assert_eq!(
            lines,
            vec![
                BillLine {
                    kind: BillLineKind::Payment,
                    provider_ref: Some("4200000001202612010000000001".into()),
                    payment_id: Some("01ORDERAAAAAAAAAAAAAAAAAAABCD".into()),
                    refund_id: None,
                    amount: cny(990),
                    status: BillLineStatus::Succeeded,
                },
                BillLine {
                    kind: BillLineKind::Refund,
                    provider_ref: Some("4200000001202612010000000001".into()),
                    payment_id: Some("01ORDERAAAAAAAAAAAAAAAAAAABCD".into()),
                    refund_id: Some("01ORDERAAAAAAAAAAAAAAAAAAARWXYZ".into()),
                    amount: cny(300),
                    status: BillLineStatus::Pending,
                },
            ]
        );
        assert!(parse_trade_bill(b"").unwrap().is_empty());
        assert!(matches!(
            parse_trade_bill("交易时间,商户号\r\n`x,`y\r\n".as_bytes()),
            Err(Error::Upstream { .. })
        ));
        let bad_amount = BILL.replacen("`0.60%,`9.90,", "`0.60%,`9.9x,", 1);
        assert!(parse_trade_bill(bad_amount.as_bytes()).is_err());
    }

    #[test]
    fn the_file_must_match_its_sha1() {
        // SHA1("abc"), the FIPS 180 example.
        let abc = "a9993e364706816aba3e25717850c26c9cd0d89d";
        assert!(check_hash(b"abc", "SHA1", abc).is_ok());
        assert!(check_hash(b"abd", "SHA1", abc).is_err());
        assert!(check_hash(b"abc", "MD5", abc).is_err());
    }
}
