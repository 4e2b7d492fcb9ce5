//! retain-policy (being written).
