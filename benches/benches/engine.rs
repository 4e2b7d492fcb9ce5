#![allow(missing_docs)] // criterion_group! generates an undocumented public function.

//! Classify and schedule throughput, one core. Figures go to docs/PERFORMANCE.md.
//!
//! Baselines in the same run: the built-in pack (16 rules) against the pack plus 200
//! organisation rules, and scanning the same text fields with no rules at all (the floor).

use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use retain_benches::{Rng, facts, large_policy, messages};
use retain_policy::{Policy, Record};

const BATCH: usize = 1_000;

fn engine(c: &mut Criterion) {
    let msgs = messages(BATCH, 42);
    let builtin = Policy::builtin().expect("built-in pack");
    let large_text = large_policy(200);
    let large = Policy::from_sources(&[("bench.toml", &large_text)]).expect("large policy");
    assert!(large.rule_count() >= 200, "{} rules", large.rule_count());
    let mut rng = Rng::new(7);
    let fact_list: Vec<_> = (0..BATCH).map(|_| facts(&mut rng)).collect();

    let mut g = c.benchmark_group("engine");
    g.throughput(Throughput::Elements(BATCH as u64));

    g.bench_function("floor_scan_text", |b| {
        b.iter(|| {
            let mut n = 0usize;
            for m in &msgs {
                n += m
                    .subject
                    .as_deref()
                    .map_or(0, |s| s.bytes().filter(|b| *b == b' ').count());
                n += m
                    .excerpt
                    .as_deref()
                    .map_or(0, |s| s.bytes().filter(|b| *b == b' ').count());
            }
            black_box(n)
        })
    });
    g.bench_function("classify_builtin_16_rules", |b| {
        b.iter(|| {
            for m in &msgs {
                black_box(builtin.classify(m));
            }
        })
    });
    g.bench_function(format!("classify_{}_rules", large.rule_count()), |b| {
        b.iter(|| {
            for m in &msgs {
                black_box(large.classify(m));
            }
        })
    });
    let classified: Vec<_> = msgs.iter().map(|m| large.classify(m)).collect();
    g.bench_function("schedule_with_facts", |b| {
        b.iter(|| {
            for ((m, c), f) in msgs.iter().zip(&classified).zip(&fact_list) {
                black_box(large.schedule(
                    Record {
                        category: &c.category,
                        created: m.created_date(),
                    },
                    f,
                    &[],
                ));
            }
        })
    });
    g.bench_function(
        format!("classify_and_schedule_{}_rules", large.rule_count()),
        |b| {
            b.iter_batched(
                || (),
                |_| {
                    for (m, f) in msgs.iter().zip(&fact_list) {
                        black_box(large.decide(m, f, &[]));
                    }
                },
                BatchSize::SmallInput,
            )
        },
    );
    g.finish();
}

criterion_group!(benches, engine);
criterion_main!(benches);
