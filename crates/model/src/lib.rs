//! Retain's domain model.
//!
//! Plain data shared by every stage: the metadata of one e-mail ([`MailMessage`]), the facts and
//! events the retention schedule depends on ([`Facts`], [`RetentionEvent`]), and what the policy
//! engine decides ([`Classification`], [`RetentionDecision`]). No I/O and no heavy dependencies,
//! so everything that builds on it compiles and tests fast.

mod category;
mod dates;
mod decision;
mod facts;
mod message;

pub use category::{Category, InvalidCategory};
pub use dates::{Period, add_period};
pub use decision::{
    Anchor, Classification, ObligationOutcome, PhiIndicators, RetentionDecision, RetentionStatus,
    Until,
};
pub use facts::{ContractAction, EventKind, Facts, RetentionEvent};
pub use message::{Address, Attachment, Direction, MailMessage, RecordKey};
