#![allow(missing_docs)] // criterion_group! generates an undocumented public function.

//! The Avro codec per message, one core: what the classifier does (decode a `MailMessage`,
//! encode a `ClassifiedRecord`) and what the scheduler does (decode a `ClassifiedRecord`).
//! Figures go to docs/PERFORMANCE.md ("Avro codec").
//!
//! Workload: 1,000 messages from `retain_generate::Generator` (seed 42), classified by the
//! built-in policy pack, single-object framing. Throughput is in messages, so criterion's
//! time per iteration divided by 1,000 is the per-message cost.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use retain_codec::{
    ClassifiedRecord, Framing, Lineage, SchemaRegistry, decode_classified_record,
    decode_mail_message, encode_classified_record, encode_mail_message,
};
use retain_generate::Generator;
use retain_policy::Policy;

const BATCH: usize = 1_000;

fn codec(c: &mut Criterion) {
    let policy = Policy::builtin().expect("built-in pack");
    let messages: Vec<_> = Generator::new(42).take(BATCH).map(|g| g.message).collect();
    let records: Vec<_> = messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            ClassifiedRecord::new(
                m.clone(),
                policy.classify(m),
                "bench",
                Lineage {
                    topic: "retain.mail".into(),
                    partition: 0,
                    offset: i as i64,
                },
            )
        })
        .collect();
    let framing = Framing::SingleObject;
    let registry = SchemaRegistry::new();
    let mail_bytes: Vec<_> = messages
        .iter()
        .map(|m| encode_mail_message(m, framing).expect("encode"))
        .collect();
    let classified_bytes: Vec<_> = records
        .iter()
        .map(|r| encode_classified_record(r, framing).expect("encode"))
        .collect();
    // The benchmark measures what round-trips.
    for (m, b) in messages.iter().zip(&mail_bytes) {
        assert_eq!(&decode_mail_message(b, &registry).expect("decode"), m);
    }
    for (r, b) in records.iter().zip(&classified_bytes) {
        assert_eq!(&decode_classified_record(b, &registry).expect("decode"), r);
    }

    let mut g = c.benchmark_group("codec");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.bench_function("encode_mail_message", |b| {
        b.iter(|| {
            for m in &messages {
                black_box(encode_mail_message(black_box(m), framing).expect("encode"));
            }
        })
    });
    g.bench_function("decode_mail_message", |b| {
        b.iter(|| {
            for bytes in &mail_bytes {
                black_box(decode_mail_message(black_box(bytes), &registry).expect("decode"));
            }
        })
    });
    g.bench_function("encode_classified_record", |b| {
        b.iter(|| {
            for r in &records {
                black_box(encode_classified_record(black_box(r), framing).expect("encode"));
            }
        })
    });
    g.bench_function("decode_classified_record", |b| {
        b.iter(|| {
            for bytes in &classified_bytes {
                black_box(decode_classified_record(black_box(bytes), &registry).expect("decode"));
            }
        })
    });
    g.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
