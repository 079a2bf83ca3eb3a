//! Adapters: the delivery queue, the secrets loader, the AWS request counter, and the
//! real implementations of the ports (`crate::ports`): the clocks, the KMS key vault, Stripe
//! and Alipay. The DynamoDB access layer is `crate::store`.

pub mod alipay;
pub mod alipay_bill;
pub mod bill_csv;
pub mod clock;
pub mod http_client;
pub mod kms;
pub mod metrics;
pub mod notify;
pub mod payment_channels;
pub mod queue;
pub mod secrets;
pub mod stripe;
pub mod supplier_http;
pub mod suppliers;
pub mod wechatpay;
pub mod wechatpay_bill;
