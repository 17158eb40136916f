//! The local demo (`scripts/demo`): the `orders` function against a
//! throwaway PostgreSQL, driven through the emulated Lambda Runtime API.
//! Prints INIT time, then each invocation's answer and latency, cold first
//! and then warm, what the server saw, then ends the environment with
//! SIGTERM (as Lambda does) and shows the CloudWatch EMF record the function
//! wrote for all of them, pretty-printed, with its size. The function's own
//! output (its logs and every EMF record) goes to a log file whose path the
//! demo prints.

use std::time::{Duration, Instant};

use integration_tests::orders::{
    emf_bytes, get_order, orders_function, post_valid_order, postgres, status, FUNCTION_NAME, MIGRATION, STARTUP,
};
use integration_tests::server_log::Log;
use integration_tests::{Invocation, RuntimeApi};
use serde_json::Value;

const WARM_INVOCATIONS: usize = 8;

#[tokio::main]
async fn main() {
    println!("starting a throwaway PostgreSQL (its own cluster in a temp dir, copied from one initdb made)…");
    let pg = postgres().await;
    pg.apply_sql_as_app(MIGRATION).await;
    println!("  listening on 127.0.0.1:{}, schema from example-functions/migrations/0001_orders.sql", pg.port());

    // Kept after the demo exits, so that it can be read then.
    let log = std::env::temp_dir().join(format!("runtime-adapter-demo-{}.log", std::process::id()));
    println!("  the function's own output (logs, EMF records) goes to {}", log.display());

    let api = RuntimeApi::start_for(FUNCTION_NAME).await;
    let started = Instant::now();
    let mut function = orders_function(&pg, &[("AWS_LAMBDA_LOG_LEVEL", "info")]).log_file(&log).spawn(&api);
    if !api.wait_next_polls(1, STARTUP).await {
        eprintln!("orders never reached its runtime loop; its output:\n{}", function.output());
        std::process::exit(1);
    }
    let init = started.elapsed();
    println!("\nINIT (process start, pool built, both warmup phases) done in {}", ms(init));

    let mark = pg.log_mark();
    println!("\ninvocations:");
    let created = api.invoke(post_valid_order("coffee beans", 2)).await;
    show("cold  POST /orders", &created);
    let id = integration_tests::orders::body(created.response())["id"].as_i64().unwrap_or(1).to_string();
    for n in 1..=WARM_INVOCATIONS {
        show(&format!("warm{n:<2}GET /orders/{id}"), &api.invoke(get_order(&id)).await);
    }
    show("warm  GET /orders/424242", &api.invoke(get_order("424242")).await);
    show("warm  POST /orders (bad body)", &api.invoke(integration_tests::orders::post_order("{\"item\": 1}")).await);

    let counts = Log::new(pg.log_since(mark)).counts();
    let invocations = WARM_INVOCATIONS + 3;
    println!("\nwhat the server saw during those {invocations} invocations:");
    println!("  new connections:  {}", counts.connections);
    println!("  prepares (parse): {}", counts.parses);
    println!("  health checks:    {}", counts.health_checks);
    println!("  statements run:   {} (the bad request ran none)", counts.executes);

    // The metrics are aggregated over a minute: SIGTERM, as Lambda sends it
    // when it ends an environment, writes what is pending.
    function.terminate();
    if function.wait_exit(Duration::from_secs(5)).await.is_none() {
        eprintln!("orders did not exit after SIGTERM");
    }
    // CloudWatch turns each EMF record on stdout into metrics. The first
    // carries the cold start and INIT.
    let stdout = function.stdout();
    let records: Vec<Value> = stdout
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|record| record.get("_aws").is_some())
        .collect();
    let bytes = emf_bytes(&stdout);
    println!(
        "\nafter SIGTERM, the function had written {} CloudWatch EMF record(s) for its {invocations} invocations, {bytes} bytes ({:.0} per invocation); the first, as CloudWatch receives it:",
        records.len(),
        bytes as f64 / invocations as f64
    );
    match records.first() {
        Some(record) => println!("{}", pretty(record, 0)),
        None => println!("  (none found in its output)"),
    }
    println!("\nthe function's whole output: {}", log.display());
}

fn show(what: &str, invocation: &Invocation) {
    let answer = match invocation.outcome.is_error() {
        true => format!("error {:?}", invocation.outcome.error_message()),
        false => {
            let response = invocation.response();
            format!("{} {}", status(response), response["body"].as_str().unwrap_or_default())
        }
    };
    println!("  {what:<34} {:>9}  {answer}", ms(invocation.latency));
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// JSON spread over lines, except for values short enough to read on one
/// (a metric's name and unit, a one-value list), which stay compact.
fn pretty(value: &Value, depth: usize) -> String {
    let compact = value.to_string();
    let (open, close, items): (&str, &str, Vec<String>) = match value {
        _ if compact.len() <= 60 => return compact,
        Value::Object(map) => (
            "{",
            "}",
            map.iter()
                .map(|(key, value)| format!("{}: {}", Value::from(key.as_str()), pretty(value, depth + 1)))
                .collect(),
        ),
        Value::Array(values) => ("[", "]", values.iter().map(|value| pretty(value, depth + 1)).collect()),
        _ => return compact,
    };
    let inner = "  ".repeat(depth + 1);
    let outer = "  ".repeat(depth);
    format!("{open}\n{inner}{}\n{outer}{close}", items.join(&format!(",\n{inner}")))
}
