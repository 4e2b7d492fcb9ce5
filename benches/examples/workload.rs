//! Prints what the engine benchmark's workload looks like (text sizes, categories), so the
//! figures in docs/PERFORMANCE.md can say what was measured.

use retain_benches::{large_policy, messages};
use retain_policy::Policy;

fn main() {
    let msgs = messages(1_000, 42);
    let text: usize = msgs
        .iter()
        .map(|m| {
            m.subject.as_deref().map_or(0, str::len) + m.excerpt.as_deref().map_or(0, str::len)
        })
        .sum();
    println!("messages: {}", msgs.len());
    println!(
        "subject + excerpt bytes per message: {:.0}",
        text as f64 / msgs.len() as f64
    );
    let p = Policy::from_sources(&[("bench.toml", &large_policy(200))]).expect("policy");
    println!(
        "rules: {}, obligations: {}",
        p.rule_count(),
        p.obligation_count()
    );
    let mut by: std::collections::BTreeMap<String, usize> = Default::default();
    for m in &msgs {
        *by.entry(p.classify(m).category.to_string()).or_default() += 1;
    }
    for (c, n) in by {
        println!("  {c}: {n}");
    }
}
