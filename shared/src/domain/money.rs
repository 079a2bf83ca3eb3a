//! Money is an integer amount of minor units with an ISO 4217 currency.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Minor units (fen, cents) and an ISO 4217 currency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Money {
    #[schema(example = 990)]
    pub amount: i64,
    #[schema(example = "CNY")]
    pub currency: String,
}

impl Money {
    /// An amount in fen (Alipay's and WeChat Pay's only currency).
    pub fn cny(amount: i64) -> Self {
        Money {
            amount,
            currency: "CNY".to_owned(),
        }
    }

    /// A price: strictly positive (zero-price purchases are a known abuse), currency
    /// three upper-case ASCII letters.
    pub fn price(amount: i64, currency: &str) -> Result<Self> {
        if amount <= 0 {
            return Err(Error::invalid(
                "invalid_price",
                "price.amount must be a positive integer number of minor units",
            ));
        }
        Ok(Money {
            amount,
            currency: parse_currency(currency)?,
        })
    }

    /// For people: `30.00 CNY` (two decimals; none for the zero-decimal currencies
    /// Kami's providers take: JPY, KRW).
    pub fn for_people(&self) -> String {
        let sign = if self.amount < 0 { "-" } else { "" };
        let units = self.amount.unsigned_abs();
        match self.currency.as_str() {
            "JPY" | "KRW" => format!("{sign}{units} {}", self.currency),
            _ => format!("{sign}{}.{:02} {}", units / 100, units % 100, self.currency),
        }
    }

    pub fn times(&self, quantity: u32) -> Result<Self> {
        let amount = self
            .amount
            .checked_mul(i64::from(quantity))
            .ok_or_else(|| Error::invalid("invalid_quantity", "order total overflows"))?;
        Ok(Money {
            amount,
            currency: self.currency.clone(),
        })
    }
}

/// Currency codes are stored upper-case; providers that send lower-case (Stripe) are
/// normalised here before any comparison.
pub fn parse_currency(code: &str) -> Result<String> {
    if code.len() == 3 && code.bytes().all(|b| b.is_ascii_alphabetic()) {
        Ok(code.to_ascii_uppercase())
    } else {
        Err(Error::invalid(
            "invalid_currency",
            "currency must be a three-letter ISO 4217 code",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_read_in_major_units() {
        assert_eq!(Money::cny(3000).for_people(), "30.00 CNY");
        assert_eq!(Money::cny(5).for_people(), "0.05 CNY");
        assert_eq!(Money::price(500, "jpy").unwrap().for_people(), "500 JPY");
        assert_eq!(
            Money {
                amount: -120,
                currency: "USD".into()
            }
            .for_people(),
            "-1.20 USD"
        );
    }

    #[test]
    fn price_must_be_positive_with_iso_currency() {
        assert!(Money::price(0, "CNY").is_err());
        assert!(Money::price(-1, "CNY").is_err());
        assert!(Money::price(100, "CN").is_err());
        assert!(Money::price(100, "C1Y").is_err());
        assert_eq!(Money::price(100, "cny").unwrap().currency, "CNY");
    }

    #[test]
    fn times_multiplies_and_refuses_overflow() {
        let price = Money::price(990, "CNY").unwrap();
        assert_eq!(price.times(3).unwrap().amount, 2970);
        let huge = Money::price(i64::MAX, "CNY").unwrap();
        assert!(huge.times(2).is_err());
    }
}
