//! retain-codec (being written).
