//! Where the scheduler gets the facts and events a message alone does not carry.
//!
//! Until the events topic exists, facts come from a [`FactsSource`]: [`InMemoryFacts`] (demos,
//! tests, a facts file loaded at start) or [`NoFacts`] (schedule on the message alone).

use std::collections::HashMap;
use std::sync::Arc;

use retain_model::{Classification, Facts, MailMessage, RetentionEvent};

/// What is known about one record besides its message.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Known {
    /// Facts (jurisdiction, holder, programs, dates, a forced category).
    pub facts: Facts,
    /// Retention events that apply to the record.
    pub events: Vec<RetentionEvent>,
}

/// Looks up what is known about a message. Called once per record on the scheduler's hot path:
/// no I/O per call.
pub trait FactsSource: Send + Sync + std::fmt::Debug {
    /// The facts and events for `message`, or `None` when nothing is known.
    fn lookup(&self, message: &MailMessage) -> Option<Arc<Known>>;

    /// Retention events from the retention-events topic (the `events` table) that match the
    /// record, with their ids; recorded on the row and scheduled with. None by default.
    fn events_for(
        &self,
        _message: &MailMessage,
        _classification: &Classification,
    ) -> Vec<retain_events::AppliedEvent> {
        Vec::new()
    }
}

/// Nothing is known: every record is scheduled on its message alone.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoFacts;

impl FactsSource for NoFacts {
    fn lookup(&self, _: &MailMessage) -> Option<Arc<Known>> {
        None
    }
}

/// Facts held in memory, keyed by record key (tenant, mailbox, message id) or by message id
/// alone (the record key wins).
#[derive(Debug, Clone, Default)]
pub struct InMemoryFacts {
    by_record: HashMap<String, Arc<Known>>,
    by_message_id: HashMap<String, Arc<Known>>,
}

impl InMemoryFacts {
    /// An empty source.
    pub fn new() -> Self {
        InMemoryFacts::default()
    }

    /// What is known about every copy of message `message_id`.
    pub fn insert_message_id(&mut self, message_id: impl Into<String>, known: Known) {
        self.by_message_id
            .insert(message_id.into(), Arc::new(known));
    }

    /// What is known about the one copy in `tenant`/`mailbox`.
    pub fn insert_record(&mut self, tenant: &str, mailbox: &str, message_id: &str, known: Known) {
        self.by_record.insert(
            retain_lake::record_key(tenant, mailbox, message_id),
            Arc::new(known),
        );
    }

    /// How many entries are held.
    pub fn len(&self) -> usize {
        self.by_record.len() + self.by_message_id.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl FactsSource for InMemoryFacts {
    fn lookup(&self, m: &MailMessage) -> Option<Arc<Known>> {
        if !self.by_record.is_empty() {
            let key = retain_lake::record_key(&m.tenant, &m.mailbox, &m.message_id);
            if let Some(k) = self.by_record.get(&key) {
                return Some(Arc::clone(k));
            }
        }
        self.by_message_id.get(&m.message_id).cloned()
    }
}

/// Applies a category forced by `facts` to the classifier's answer, as
/// [`Policy::decide`](retain_policy::Policy::decide) does: the PHI indicators stay, the rule and
/// the other matches go, confidence is 1.
pub fn apply_facts(classification: &mut Classification, facts: &Facts) {
    if let Some(forced) = &facts.category {
        classification.category = forced.clone();
        classification.rule = None;
        classification.confidence = 1.0;
        classification.forced = true;
        classification.also_matched.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use retain_model::Category;

    #[test]
    fn record_keys_win_over_message_ids() {
        let mut f = InMemoryFacts::new();
        let by_id = Known {
            facts: Facts {
                jurisdiction: Some("NY".into()),
                ..Facts::default()
            },
            events: Vec::new(),
        };
        let by_record = Known {
            facts: Facts {
                jurisdiction: Some("CA".into()),
                ..Facts::default()
            },
            events: Vec::new(),
        };
        f.insert_message_id("m@x", by_id.clone());
        f.insert_record("default", "jdoe", "m@x", by_record.clone());
        let m = MailMessage::new("m@x", "jdoe");
        assert_eq!(f.lookup(&m).as_deref(), Some(&by_record));
        let other_copy = MailMessage::new("m@x", "asmith");
        assert_eq!(f.lookup(&other_copy).as_deref(), Some(&by_id));
        assert_eq!(NoFacts.lookup(&m), None);
    }

    #[test]
    fn a_forced_category_matches_policy_decide() {
        let policy = retain_policy::Policy::builtin().unwrap();
        let mut m = MailMessage::new("m@x", "jdoe");
        m.subject = Some("MRN 12345678 discharge summary".into());
        let facts = Facts {
            category: Some(Category::new("billing").unwrap()),
            ..Facts::default()
        };
        let mut c = policy.classify(&m);
        apply_facts(&mut c, &facts);
        let (expected, _) = policy.decide(&m, &facts, &[]);
        assert_eq!(c, expected);
    }
}
