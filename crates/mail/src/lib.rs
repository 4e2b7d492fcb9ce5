//! retain-mail (being written).
