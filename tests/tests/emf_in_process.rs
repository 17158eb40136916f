//! The EMF records of invocations served through the lifecycle layer on a
//! runtime of the caller's own, in-process: without [`Lifecycle::run`],
//! whose hook after each answer writes what an invocation's end took, a
//! record due at the end of an invocation is written before the layer
//! answers. Nothing would ever write a record kept for a hook that never
//! comes, until SIGTERM.
//!
//! The records go to the process's stdout, so this binary has one test,
//! which points file descriptor 1 at a pipe while the invocations run and
//! back before it reads them (libtest writes nothing to stdout while its
//! only test runs).
//!
//! [`Lifecycle::run`]: runtime_adapter::Lifecycle::run

use std::collections::HashMap;
use std::io::Read as _;
use std::os::fd::AsFd as _;
use std::time::Duration;

use integration_tests::{inproc, Postgres};
use lambda_runtime::tower::{Layer as _, ServiceExt as _};
use lambda_runtime::LambdaEvent;
use runtime_adapter::{Adapter, Config};
use serde_json::{json, Value};

#[tokio::test]
async fn without_lifecycle_run_each_invocations_record_is_written_before_it_answers() {
    let pg = Postgres::start().await;
    // A record after every invocation, naming it.
    let vars: HashMap<&str, String> = [
        ("DATABASE_URL", pg.database_url()),
        ("DB_METRICS_INTERVAL_MS", "0".to_owned()),
        ("AWS_LAMBDA_FUNCTION_NAME", "emf-in-process".to_owned()),
    ]
    .into_iter()
    .collect();
    let config = Config::from_lookup(|name| vars.get(name).cloned()).expect("configuration");
    let lifecycle = Adapter::builder().config(config).start().await.expect("init");
    let service = lifecycle.layer().layer(inproc::select_one(lifecycle.adapter().clone()));

    let mut records = Vec::new();
    for request_id in ["first", "second"] {
        let mut context = inproc::context(Duration::from_secs(30));
        context.request_id = request_id.to_owned();
        let (answer, written) =
            with_stdout_captured(service.clone().oneshot(LambdaEvent::new(json!({}), context))).await;
        assert_eq!(answer.expect("answered"), json!({ "one": 1 }));
        // Read once the layer's future has answered: what is here was
        // written before the answer.
        let lines: Vec<Value> = written
            .lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
            .collect();
        assert_eq!(lines.len(), 1, "{request_id}: one record before the answer, got {written:?}");
        records.extend(lines);
    }
    let named: Vec<&str> = records.iter().map(|r| r["function_request_id"].as_str().unwrap_or("none")).collect();
    assert_eq!(named, ["first", "second"], "each record names its invocation: {records:?}");
    for record in &records {
        assert_eq!(record["function_name"], "emf-in-process");
        // The invocation's one statement, in its own record.
        assert_eq!(record["QueryDuration"].as_array().map(Vec::len), Some(1), "{record}");
    }
    assert_eq!((records[0]["ColdStart"].as_u64(), records[1]["ColdStart"].as_u64()), (Some(1), Some(0)));
}

/// Runs `work` with file descriptor 1 pointed at a pipe, and returns its
/// output with what was written to stdout meanwhile.
async fn with_stdout_captured<T>(work: impl std::future::Future<Output = T>) -> (T, String) {
    use std::io::Write as _;
    let (reader, writer) = rustix::pipe::pipe().expect("a pipe");
    let mut reader = std::fs::File::from(reader);
    std::io::stdout().flush().expect("stdout flushed");
    let saved = rustix::io::dup(std::io::stdout().as_fd()).expect("stdout duplicated");
    rustix::stdio::dup2_stdout(&writer).expect("stdout pointed at the pipe");
    let out = work.await;
    std::io::stdout().flush().expect("stdout flushed");
    rustix::stdio::dup2_stdout(&saved).expect("stdout restored");
    // The pipe's last writer closed: the read ends at what was written.
    drop(writer);
    let mut written = String::new();
    reader.read_to_string(&mut written).expect("the pipe read");
    (out, written)
}
