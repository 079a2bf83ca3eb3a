//! Alipay's trade bill (`alipay.data.dataservice.bill.downloadurl.query`, `bill_type=trade`
//! → `bill_download_url`; then the file). The file is a zip of two GBK CSV files: the
//! detail (业务明细, first line `#支付宝业务明细查询`) and the summary (业务明细(汇总)).
//! The detail: `#` lines about the account and the dates, a header row of Chinese column
//! names, one row per trade (`交易`) and per refund (`退款`) with every field padded by a
//! tab, then `#` lines with the totals. Amounts are yuan with two decimals, refunds
//! negative. Only money that moved is listed: every line has succeeded.

use std::io::{Cursor, Read};

use crate::domain::money::Money;
use crate::error::{Error, Result};
use crate::ports::payment::{BillLine, BillLineKind, BillLineStatus};

const PROVIDER: &str = "alipay";
const DETAIL_TITLE: &str = "#支付宝业务明细查询";
/// No day's bill of one account comes near this; a larger entry is refused, not read
/// (a zip that inflates without end).
const MAX_ENTRY_BYTES: u64 = 256 * 1024 * 1024;

fn bad(message: &str) -> Error {
    Error::Upstream {
        system: PROVIDER,
        message: format!("Alipay's bill {message}"),
    }
}

/// The detail file's lines, read from the downloaded zip: the entry whose text (GBK)
/// starts with the detail's title, whatever its name (Alipay names entries in GBK
/// without saying so, which zip readers take for another code page).
pub fn read_bill_zip(file: &[u8]) -> Result<Vec<BillLine>> {
    let mut archive = zip::ZipArchive::new(Cursor::new(file)).map_err(|_| bad("is not a zip"))?;
    for index in 0..archive.len() {
        let entry = archive
            .by_index(index)
            .map_err(|_| bad("has an entry that cannot be read"))?;
        let mut bytes = Vec::new();
        entry
            .take(MAX_ENTRY_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|_| bad("has an entry that cannot be inflated"))?;
        if bytes.len() as u64 > MAX_ENTRY_BYTES {
            return Err(bad("has an entry too large to read"));
        }
        let (text, _, malformed) = encoding_rs::GBK.decode(&bytes);
        if text
            .trim_start_matches('\u{feff}')
            .starts_with(DETAIL_TITLE)
        {
            if malformed {
                return Err(bad("detail is not GBK text"));
            }
            return parse_detail(&text);
        }
    }
    Err(bad("has no detail file (#支付宝业务明细查询)"))
}

/// The columns Kami reads, by their names in the header row.
struct Columns {
    trade_no: usize,
    out_trade_no: usize,
    kind: usize,
    order_amount: usize,
    received: usize,
    request_no: usize,
}

impl Columns {
    fn of(header: &[String]) -> Result<Self> {
        let at = |name: &str| {
            super::bill_csv::column(header, name, |name| bad(&format!("has no column {name}")))
        };
        Ok(Columns {
            trade_no: at("支付宝交易号")?,
            out_trade_no: at("商户订单号")?,
            kind: at("业务类型")?,
            order_amount: at("订单金额（元）")?,
            received: at("商家实收（元）")?,
            request_no: at("退款批次号/请求号")?,
        })
    }
}

/// The detail's trades and refunds as bill lines: a trade is a payment of its order
/// amount; a refund (its merchant-received amount, negative) names Kami's refund by its
/// request number (`out_request_no`); other business types are not Kami's.
pub fn parse_detail(text: &str) -> Result<Vec<BillLine>> {
    let clean = |value: &str| value.trim().to_owned();
    let rows = super::bill_csv::rows(text.as_bytes(), true, clean, || bad("is not CSV"))?;
    let Some((header, rows)) = rows.split_first() else {
        return Err(bad("has no header row"));
    };
    let columns = Columns::of(header)?;
    let mut lines = Vec::new();
    for row in rows {
        let get = |at: usize| row.get(at).map(String::as_str).unwrap_or_default();
        let named = |at: usize| Some(get(at).to_owned()).filter(|id| !id.is_empty());
        let (kind, amount, refund_id) = match get(columns.kind) {
            "交易" => (BillLineKind::Payment, get(columns.order_amount), None),
            "退款" => (
                BillLineKind::Refund,
                get(columns.received),
                named(columns.request_no),
            ),
            _ => continue,
        };
        let (negative, unsigned) = match amount.strip_prefix('-') {
            Some(unsigned) => (true, unsigned),
            None => (false, amount),
        };
        let fen = super::alipay::parse_yuan(unsigned)
            .filter(|_| (kind == BillLineKind::Refund) == negative)
            .ok_or_else(|| bad(&format!("has an amount that is not yuan: {amount:?}")))?;
        lines.push(BillLine {
            kind,
            provider_ref: named(columns.trade_no),
            payment_id: named(columns.out_trade_no),
            refund_id,
            amount: Money::cny(fen),
            status: BillLineStatus::Succeeded,
        });
    }
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    /// A day's detail as Alipay writes it: a payment, a partial refund of it, a
    /// transfer that is not a trade, the totals.
    const DETAIL: &str = "#支付宝业务明细查询\r\n\
#账号：[20881234567890120156]\r\n\
#起始日期：[2026年12月01日 00:00:00]   终止日期：[2026年12月02日 00:00:00]\r\n\
#-----------------------------------------业务明细列表----------------------------------------\r\n\
支付宝交易号,商户订单号,业务类型,商品名称,创建时间,完成时间,门店编号,门店名称,操作员,终端号,对方账户,订单金额（元）,商家实收（元）,支付宝红包（元）,集分宝（元）,支付宝优惠（元）,商家优惠（元）,券核销金额（元）,券名称,商家红包消费金额（元）,卡消费金额（元）,退款批次号/请求号,服务费（元）,分润（元）,备注\r\n\
2026120122001400000000000001\t,01PAYAAAAAAAAAAAAAAAAAAAAAA\t,交易\t,Demo card\t,2026-12-01 10:00:00\t,2026-12-01 10:00:05\t,\t,\t,\t,\t,buyer***@example.com\t,9.90\t,9.90\t,0.00\t,0.00\t,0.00\t,0.00\t,0.00\t,\t,0.00\t,0.00\t,\t,-0.06\t,0.00\t,\t\r\n\
2026120122001400000000000001\t,01PAYAAAAAAAAAAAAAAAAAAAAAA\t,退款\t,Demo card\t,2026-12-01 10:00:00\t,2026-12-01 11:00:00\t,\t,\t,\t,\t,buyer***@example.com\t,-3.00\t,-3.00\t,0.00\t,0.00\t,0.00\t,0.00\t,0.00\t,\t,0.00\t,0.00\t,01REFUNDBBBBBBBBBBBBBBBBBBBB\t,0.02\t,0.00\t,\t\r\n\
2026120122001400000000000002\t,\t,转账\t,\t,2026-12-01 12:00:00\t,2026-12-01 12:00:00\t,\t,\t,\t,\t,\t,1.00\t,1.00\t,0.00\t,0.00\t,0.00\t,0.00\t,0.00\t,\t,0.00\t,0.00\t,\t,0.00\t,0.00\t,\t\r\n\
#-----------------------------------------业务明细列表结束------------------------------------\r\n\
#交易合计：1笔，商家实收共9.90元，商家优惠共0.00元\r\n\
#退款合计：1笔，商家实收退款共-3.00元，商家优惠退款共0.00元\r\n\
#导出时间：[2026年12月02日 09:10:11]\r\n";

    const SUMMARY: &str = "#支付宝业务汇总查询\r\n#账号：[20881234567890120156]\r\n门店编号,门店名称,交易订单总笔数\r\n合计,,1\r\n";

    fn zipped(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut writer = zip::ZipWriter::new(Cursor::new(Vec::new()));
        for (name, bytes) in entries {
            writer
                .start_file(
                    *name,
                    zip::write::SimpleFileOptions::default()
                        .compression_method(zip::CompressionMethod::Stored),
                )
                .unwrap();
            writer.write_all(bytes).unwrap();
        }
        writer.finish().unwrap().into_inner()
    }

    fn gbk(text: &str) -> Vec<u8> {
        encoding_rs::GBK.encode(text).0.into_owned()
    }

    #[test]
    fn reads_the_detail_out_of_the_zip_whatever_the_entries_order() {
        let file = zipped(&[
            ("2088123456789012_20261201_summary.csv", &gbk(SUMMARY)),
            ("2088123456789012_20261201_detail.csv", &gbk(DETAIL)),
        ]);
        let lines = read_bill_zip(&file).unwrap();
        assert_eq!(
            lines,
            vec![
                BillLine {
                    kind: BillLineKind::Payment,
                    provider_ref: Some("2026120122001400000000000001".into()),
                    payment_id: Some("01PAYAAAAAAAAAAAAAAAAAAAAAA".into()),
                    refund_id: None,
                    amount: Money::cny(990),
                    status: BillLineStatus::Succeeded,
                },
                BillLine {
                    kind: BillLineKind::Refund,
                    provider_ref: Some("2026120122001400000000000001".into()),
                    payment_id: Some("01PAYAAAAAAAAAAAAAAAAAAAAAA".into()),
                    refund_id: Some("01REFUNDBBBBBBBBBBBBBBBBBBBB".into()),
                    amount: Money::cny(300),
                    status: BillLineStatus::Succeeded,
                },
            ]
        );
    }

    #[test]
    fn a_bill_that_cannot_be_read_is_an_upstream_error_never_an_empty_bill() {
        let only_summary = zipped(&[("s.csv", &gbk(SUMMARY))]);
        let positive_refund = DETAIL.replacen(",-3.00\t,-3.00\t,", ",-3.00\t,3.00\t,", 1);
        let not_yuan = DETAIL.replacen(",9.90\t,9.90\t,", ",9.9x\t,9.90\t,", 1);
        let no_column = DETAIL.replacen("商户订单号", "订单号", 1);
        for file in [
            b"not a zip".to_vec(),
            only_summary,
            zipped(&[("d.csv", &gbk(&positive_refund))]),
            zipped(&[("d.csv", &gbk(&not_yuan))]),
            zipped(&[("d.csv", &gbk(&no_column))]),
        ] {
            assert!(
                matches!(read_bill_zip(&file), Err(Error::Upstream { .. })),
                "{file:?}"
            );
        }
    }

    #[test]
    fn a_day_without_trades_is_an_empty_bill() {
        let empty: String = DETAIL
            .split("\r\n")
            .filter(|line| !line.starts_with("20261201"))
            .collect::<Vec<_>>()
            .join("\r\n");
        let file = zipped(&[("d.csv", &gbk(&empty))]);
        assert!(read_bill_zip(&file).unwrap().is_empty());
    }
}
