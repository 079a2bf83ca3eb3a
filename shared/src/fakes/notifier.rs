use std::sync::Mutex;

use super::{Behaviour, Script, lock};
use crate::error::Result;
use crate::ports::PortFuture;
use crate::ports::notifier::{Message, Notifier};

const NAME: &str = "fake-notifier";

/// A notifier in memory: `sent` is what reached buyers (a message twice when it was
/// answered twice, or sent again after a lost answer).
#[derive(Default)]
pub struct FakeNotifier {
    script: Script,
    sent: Mutex<Vec<Message>>,
}

impl FakeNotifier {
    pub fn then(&self, behaviour: Behaviour) {
        self.script.then(behaviour);
    }

    pub fn sent(&self) -> Vec<Message> {
        lock(&self.sent).clone()
    }

    fn send_now(&self, message: &Message) -> Result<String> {
        self.script
            .perform(NAME, || lock(&self.sent).push(message.clone()))?;
        Ok(format!("fake_msg_{}", message.message_id))
    }
}

impl Notifier for FakeNotifier {
    fn name(&self) -> &'static str {
        NAME
    }

    fn send<'a>(&'a self, message: &'a Message) -> PortFuture<'a, String> {
        Box::pin(async move { self.send_now(message) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;
    use crate::ports::notifier::Channel;

    fn message(id: &str) -> Message {
        Message {
            message_id: id.into(),
            channel: Channel::Email,
            to: "buyer@example.com".into(),
            subject: "Your order".into(),
            body: "Your key: SECRET-CODE".into(),
        }
    }

    #[tokio::test]
    async fn sends_fails_times_out_and_answers_twice() {
        let notifier = FakeNotifier::default();
        for behaviour in [Behaviour::Fail, Behaviour::TimeOut, Behaviour::AnswerTwice] {
            notifier.then(behaviour);
        }
        assert!(matches!(
            notifier.send(&message("m1")).await,
            Err(Error::Upstream { .. })
        ));
        assert!(notifier.sent().is_empty());
        assert!(matches!(
            notifier.send(&message("m2")).await,
            Err(Error::Timeout { .. })
        ));
        assert_eq!(
            notifier.sent().len(),
            1,
            "the lost answer's message arrived"
        );
        assert_eq!(notifier.send(&message("m3")).await.unwrap(), "fake_msg_m3");
        assert_eq!(notifier.send(&message("m4")).await.unwrap(), "fake_msg_m4");
        let ids: Vec<String> = notifier.sent().into_iter().map(|m| m.message_id).collect();
        assert_eq!(ids, ["m2", "m3", "m3", "m4"]);
    }

    #[test]
    fn a_message_never_prints_its_body() {
        assert!(!format!("{:?}", message("m1")).contains("SECRET-CODE"));
    }
}
