//! The `dead_letters` table's name and columns (written by `retain run dead-letters` in
//! `retain-stream`, read by the SQL catalog): one row per dead letter of the `.dlq` topics —
//! where it sits, where it came from, why, its key and size — never its payload.

use std::sync::Arc;

use deltalake::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

/// The table's name.
pub const DEAD_LETTERS_TABLE: &str = "dead_letters";

/// The table's columns.
pub fn dead_letters_schema() -> SchemaRef {
    let s = |n: &str, null: bool| Field::new(n, DataType::Utf8, null);
    let ts = |n: &str, null: bool| {
        Field::new(
            n,
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            null,
        )
    };
    Arc::new(Schema::new(vec![
        s("dlq_topic", false),
        Field::new("dlq_partition", DataType::Int32, false),
        Field::new("dlq_offset", DataType::Int64, false),
        s("source_topic", true),
        Field::new("source_partition", DataType::Int32, true),
        Field::new("source_offset", DataType::Int64, true),
        s("error", true),
        s("message_key", true),
        Field::new("payload_bytes", DataType::Int64, false),
        ts("dead_lettered_at", true),
        ts("stored_at", false),
    ]))
}
