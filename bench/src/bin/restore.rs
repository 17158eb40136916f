//! SnapStart restore against a normal cold start, for BENCHMARKS.md:
//! `cargo run --release --locked -p bench --bin restore`.
//!
//! - Cold start: a new `orders` process with an invocation already queued,
//!   from spawn to its first answer (INIT, warmup and the invocation).
//! - Restore: a new `orders` process under SnapStart, brought to its snapshot
//!   point (INIT done, pool closed); then the invocation is queued and the
//!   snapshot restored, and the time runs from the restore to the first
//!   answer (re-warm in the restore hook, then the invocation). What a real
//!   restore adds before the hook (loading the microVM) is not modelled.

use std::time::{Duration, Instant};

use integration_tests::orders::{get_order, orders_function, postgres, FUNCTION_NAME, MIGRATION, STARTUP};
use integration_tests::{InvokeOptions, RuntimeApi};

const SAMPLES: usize = 9;

#[tokio::main]
async fn main() {
    let pg = postgres().await;
    pg.apply_sql_as_app(MIGRATION).await;
    let (mut cold, mut restore) = (Vec::new(), Vec::new());
    for _ in 0..SAMPLES {
        // Interleaved, so that drift hits both alike.
        let api = RuntimeApi::start_for(FUNCTION_NAME).await;
        let started = Instant::now();
        let pending = api.enqueue(get_order("1"), InvokeOptions::default());
        let function = orders_function(&pg, &[]).spawn(&api);
        let done = pending.wait().await;
        assert!(!done.outcome.is_error(), "cold start failed: {:?}\n{}", done.outcome, function.output());
        cold.push(started.elapsed());
        drop(function);

        let api = RuntimeApi::start_for(FUNCTION_NAME).await;
        let function = orders_function(&pg, &[("AWS_LAMBDA_INITIALIZATION_TYPE", "snap-start")]).spawn(&api);
        assert!(api.wait_restore_polls(1, STARTUP).await, "no snapshot point: {}", function.output());
        let pending = api.enqueue(get_order("1"), InvokeOptions::default());
        let started = Instant::now();
        api.restore();
        let done = pending.wait().await;
        assert!(!done.outcome.is_error(), "restore failed: {:?}\n{}", done.outcome, function.output());
        restore.push(started.elapsed());
    }
    println!("| path | samples | median ms | min ms | max ms |");
    println!("|---|---|---|---|---|");
    for (name, mut samples) in
        [("cold start: spawn → first answer", cold), ("SnapStart: restore → first answer", restore)]
    {
        samples.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "| {name} | {} | {:.3} | {:.3} | {:.3} |",
            samples.len(),
            ms(samples[samples.len() / 2]),
            ms(samples[0]),
            ms(samples[samples.len() - 1])
        );
    }
}
