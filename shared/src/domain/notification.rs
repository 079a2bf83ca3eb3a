//! What Kami tells a buyer and in which words: message kinds, the buyer's language and
//! phone number, and the templates (one per kind, channel and language). No I/O.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::{Error, Result};

/// The buyer's language for what Kami sends them (`buyer.language`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum Language {
    #[default]
    #[serde(rename = "zh-CN")]
    ZhCn,
    #[serde(rename = "en")]
    En,
}

impl Language {
    pub fn parse(tag: &str) -> Result<Self> {
        match tag {
            "zh-CN" => Ok(Language::ZhCn),
            "en" => Ok(Language::En),
            _ => Err(Error::invalid_field(
                "invalid_language",
                "buyer.language",
                "buyer.language must be zh-CN or en",
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Language::ZhCn => "zh-CN",
            Language::En => "en",
        }
    }
}

/// A phone number in E.164 (`+` and 8 to 15 digits, the first not 0): what SMS takes.
pub fn validate_phone(phone: &str) -> Result<()> {
    let digits = phone.strip_prefix('+').unwrap_or_default();
    if (8..=15).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0')
    {
        return Ok(());
    }
    Err(Error::invalid_field(
        "invalid_phone",
        "buyer.phone",
        "buyer.phone must be an E.164 number: + and 8 to 15 digits",
    ))
}

/// How to reach a buyer besides their email, and in which language (from `buyer`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Contact {
    /// E.164; notifications also go by SMS when set.
    pub phone: Option<String>,
    pub language: Language,
}

/// What a notification is about: an order delivered, a subscription's renewal order to
/// pay, or the period an order granted ending soon.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotificationKind {
    Delivery,
    RenewalNotice,
    ExpiryReminder,
}

impl NotificationKind {
    pub fn as_str(self) -> &'static str {
        match self {
            NotificationKind::Delivery => "delivery",
            NotificationKind::RenewalNotice => "renewal_notice",
            NotificationKind::ExpiryReminder => "expiry_reminder",
        }
    }
}

/// How a notification travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    Email,
    Sms,
}

impl Channel {
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Email => "email",
            Channel::Sms => "sms",
        }
    }

    /// What separates lines of a message: an SMS is one line.
    pub fn line_break(self) -> &'static str {
        match self {
            Channel::Email => "\n",
            Channel::Sms => " ",
        }
    }

    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "email" => Ok(Channel::Email),
            "sms" => Ok(Channel::Sms),
            _ => Err(Error::Corrupt(format!(
                "unknown notification channel {name}"
            ))),
        }
    }
}

/// What a delivery notification says. `goods` are the delivered goods as lines (card
/// keys among them), present only when the product allows them in notifications.
pub struct DeliveryFacts<'a> {
    pub order_id: &'a str,
    pub title: &'a str,
    pub quantity: u32,
    pub goods: &'a [String],
    /// Where the buyer sees the order (`{api}/orders/{id}`, opened with their token).
    pub order_url: Option<&'a str>,
}

/// A rendered message: the subject (email only) and the text.
#[derive(PartialEq, Eq)]
pub struct Rendered {
    pub subject: String,
    pub body: String,
}

/// Bodies may hold card keys: never printed.
impl std::fmt::Debug for Rendered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rendered")
            .field("subject", &self.subject)
            .finish_non_exhaustive()
    }
}

/// The delivery notification in `language` for `channel`. SMS is one short text; it
/// carries goods too when allowed (a card key is short; the order page has the rest).
pub fn render_delivery(facts: &DeliveryFacts, language: Language, channel: Channel) -> Rendered {
    let DeliveryFacts {
        order_id,
        title,
        quantity,
        goods,
        order_url,
    } = *facts;
    let line_break = channel.line_break();
    let goods_text = goods.join(line_break);
    let (subject, intro, goods_heading, see_order) = match language {
        Language::ZhCn => (
            format!("您的订单 {order_id} 已发货"),
            format!("您购买的「{title}」× {quantity} 已发货。"),
            "您的商品：",
            "在订单页查看（使用下单时获得的访问令牌）：",
        ),
        Language::En => (
            format!("Your order {order_id} is delivered"),
            format!("Your {quantity} × \"{title}\" has been delivered."),
            "Your goods:",
            "See it on your order page (with the access token you got at checkout):",
        ),
    };
    let mut body = match channel {
        Channel::Email => format!("{intro}\n\n"),
        Channel::Sms => format!("[Kami] {intro} "),
    };
    if !goods.is_empty() {
        body.push_str(goods_heading);
        body.push_str(line_break);
        body.push_str(&goods_text);
        body.push_str(if channel == Channel::Email {
            "\n\n"
        } else {
            " "
        });
    }
    if let Some(url) = order_url {
        body.push_str(see_order);
        body.push_str(line_break);
        body.push_str(url);
        if channel == Channel::Email {
            body.push('\n');
        }
    }
    Rendered {
        subject,
        body: body.trim_end().to_owned(),
    }
}

/// What an expiry reminder says: which entitlement ends when.
pub struct ReminderFacts<'a> {
    pub title: &'a str,
    /// The entitlement's name; `None` for license keys.
    pub entitlement: Option<&'a str>,
    pub ends_at: &'a str,
    /// The order that granted the period (`{api}/orders/{id}`).
    pub order_url: Option<&'a str>,
}

/// The expiry reminder in `language` for `channel`.
pub fn render_expiry_reminder(
    facts: &ReminderFacts,
    language: Language,
    channel: Channel,
) -> Rendered {
    let ReminderFacts {
        title,
        entitlement,
        ends_at,
        order_url,
    } = *facts;
    let (subject, mut lines) = match language {
        Language::ZhCn => (
            format!("「{title}」将于 {ends_at} 到期"),
            vec![
                format!(
                    "您的「{title}」{}将于 {ends_at} 到期。",
                    entitlement
                        .map(|name| format!("（{name}）"))
                        .unwrap_or_default()
                ),
                "如需继续使用，请在到期前再次购买。".to_owned(),
            ],
        ),
        Language::En => (
            format!("\"{title}\" ends at {ends_at}"),
            vec![
                format!(
                    "Your \"{title}\" {}ends at {ends_at}.",
                    entitlement
                        .map(|name| format!("({name}) "))
                        .unwrap_or_default()
                ),
                "Buy it again before then to keep it without a break.".to_owned(),
            ],
        ),
    };
    if let Some(url) = order_url {
        lines.push(url.to_owned());
    }
    Rendered {
        subject,
        body: lines.join(channel.line_break()),
    }
}

/// What a renewal notice says: the renewal order to pay before the period ends, with
/// the bearer token that opens it (the buyer has no other).
pub struct RenewalFacts<'a> {
    pub order_id: &'a str,
    pub title: &'a str,
    /// The amount as text (`"30.00 CNY"`).
    pub amount: &'a str,
    pub period_end: &'a str,
    pub access_token: &'a str,
    /// `{api}/orders/{id}`: pay with `POST` to its `/payments`.
    pub order_url: Option<&'a str>,
}

/// The renewal notice in `language` for `channel`.
pub fn render_renewal_notice(
    facts: &RenewalFacts,
    language: Language,
    channel: Channel,
) -> Rendered {
    let RenewalFacts {
        order_id,
        title,
        amount,
        period_end,
        access_token,
        order_url,
    } = *facts;
    let link = order_url.unwrap_or(order_id);
    let (subject, lines) = match language {
        Language::ZhCn => (
            format!("续费「{title}」：请在 {period_end} 前支付"),
            [
                format!("您订阅的「{title}」将于 {period_end} 到期。"),
                format!("续费订单 {order_id}，金额 {amount}，请在到期前支付，服务不会中断。"),
                format!("订单：{link}"),
                format!("访问令牌：{access_token}"),
                "未支付则到期后停止；不再续费可取消订阅。".to_owned(),
            ],
        ),
        Language::En => (
            format!("Renew \"{title}\": pay before {period_end}"),
            [
                format!("Your subscription to \"{title}\" ends at {period_end}."),
                format!(
                    "Renewal order {order_id} for {amount}: pay it before then and nothing stops."
                ),
                format!("Order: {link}"),
                format!("Access token: {access_token}"),
                "Unpaid, it ends then; you can cancel the subscription to stop renewals."
                    .to_owned(),
            ],
        ),
    };
    Rendered {
        subject,
        body: lines.join(channel.line_break()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(goods: &[String]) -> DeliveryFacts<'_> {
        DeliveryFacts {
            order_id: "01JORDER",
            title: "Steam 100",
            quantity: 2,
            goods,
            order_url: Some("https://api.example/orders/01JORDER"),
        }
    }

    #[test]
    fn languages_parse_and_default_to_chinese() {
        assert_eq!(Language::parse("en").unwrap(), Language::En);
        assert_eq!(Language::parse("zh-CN").unwrap(), Language::ZhCn);
        assert_eq!(Language::default(), Language::ZhCn);
        for bad in ["EN", "zh", "fr", ""] {
            assert!(
                matches!(
                    Language::parse(bad),
                    Err(Error::InvalidRequest {
                        code: "invalid_language",
                        ..
                    })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn phones_are_e164() {
        for good in ["+8613800000000", "+14155550100", "+44123456"] {
            assert!(validate_phone(good).is_ok(), "{good}");
        }
        for bad in [
            "13800000000",
            "+0123456789",
            "+123",
            "+1234567890123456",
            "+86 138",
            "",
        ] {
            assert!(validate_phone(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_delivery_says_what_was_bought_in_the_buyers_language() {
        let goods = vec!["KEY-ONE".to_owned(), "KEY-TWO".to_owned()];
        let zh = render_delivery(&facts(&goods), Language::ZhCn, Channel::Email);
        assert_eq!(zh.subject, "您的订单 01JORDER 已发货");
        assert!(
            zh.body.starts_with("您购买的「Steam 100」× 2 已发货。"),
            "{}",
            zh.body
        );
        assert!(zh.body.contains("KEY-ONE\nKEY-TWO"), "{}", zh.body);
        let en = render_delivery(&facts(&goods), Language::En, Channel::Email);
        assert_eq!(en.subject, "Your order 01JORDER is delivered");
        assert!(
            en.body.contains("Your goods:\nKEY-ONE\nKEY-TWO"),
            "{}",
            en.body
        );
        assert!(
            en.body.ends_with("https://api.example/orders/01JORDER"),
            "{}",
            en.body
        );
    }

    #[test]
    fn a_renewal_notice_carries_the_order_its_amount_and_token() {
        let facts = RenewalFacts {
            order_id: "01JRENEW",
            title: "VIP",
            amount: "30.00 CNY",
            period_end: "2026-12-31T00:00:00Z",
            access_token: "tok_secret",
            order_url: Some("https://api.example/orders/01JRENEW"),
        };
        let en = render_renewal_notice(&facts, Language::En, Channel::Email);
        assert_eq!(en.subject, "Renew \"VIP\": pay before 2026-12-31T00:00:00Z");
        for part in [
            "01JRENEW",
            "30.00 CNY",
            "tok_secret",
            "https://api.example/orders/01JRENEW",
        ] {
            assert!(en.body.contains(part), "{part}: {}", en.body);
        }
        let zh = render_renewal_notice(&facts, Language::ZhCn, Channel::Sms);
        assert!(zh.subject.starts_with("续费「VIP」"), "{}", zh.subject);
        assert!(
            !zh.body.contains('\n') && zh.body.contains("tok_secret"),
            "{}",
            zh.body
        );
        assert!(!format!("{zh:?}").contains("tok_secret"));
    }

    #[test]
    fn an_expiry_reminder_names_the_right_and_its_end() {
        let facts = ReminderFacts {
            title: "VIP",
            entitlement: Some("vip"),
            ends_at: "2026-12-31T00:00:00Z",
            order_url: None,
        };
        let en = render_expiry_reminder(&facts, Language::En, Channel::Email);
        assert_eq!(en.subject, "\"VIP\" ends at 2026-12-31T00:00:00Z");
        assert!(
            en.body.contains("(vip) ends at 2026-12-31T00:00:00Z"),
            "{}",
            en.body
        );
        let zh = render_expiry_reminder(&facts, Language::ZhCn, Channel::Sms);
        assert_eq!(zh.subject, "「VIP」将于 2026-12-31T00:00:00Z 到期");
        assert!(!zh.body.contains('\n'));
        // A license key's: the product alone.
        let key = ReminderFacts {
            entitlement: None,
            title: "Editor Pro",
            ..facts
        };
        let en = render_expiry_reminder(&key, Language::En, Channel::Email);
        assert!(
            en.body
                .starts_with("Your \"Editor Pro\" ends at 2026-12-31T00:00:00Z."),
            "{}",
            en.body
        );
        let zh = render_expiry_reminder(&key, Language::ZhCn, Channel::Email);
        assert!(
            zh.body
                .starts_with("您的「Editor Pro」将于 2026-12-31T00:00:00Z 到期。"),
            "{}",
            zh.body
        );
    }

    #[test]
    fn an_sms_with_several_goods_is_one_line() {
        let goods = vec!["KEY-ONE".to_owned(), "KEY-TWO".to_owned()];
        let sms = render_delivery(&facts(&goods), Language::En, Channel::Sms);
        assert!(sms.body.contains("KEY-ONE KEY-TWO"), "{}", sms.body);
        assert!(!sms.body.contains('\n'), "{}", sms.body);
    }

    #[test]
    fn without_goods_the_message_points_to_the_order_only() {
        let rendered = render_delivery(&facts(&[]), Language::En, Channel::Sms);
        assert!(!rendered.body.contains("goods"), "{}", rendered.body);
        assert!(
            !rendered.body.contains('\n'),
            "an SMS is one line: {}",
            rendered.body
        );
        assert!(format!("{rendered:?}").contains("subject"));
        assert!(!format!("{rendered:?}").contains("order page"));
    }
}
