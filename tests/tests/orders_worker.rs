//! The `orders-worker` example: SQS batches written idempotently (the
//! message id is a unique key), partial batch failures for exactly the
//! records that cannot succeed, and a whole-batch failure while the
//! database is unreachable.

use std::time::Duration;

use integration_tests::worker::{batch, failed_ids, order, orders_by_message, WorkerEnv, SQS_EVENT};
use integration_tests::InvokeOptions;
use serde_json::Value;

fn row(id: &str, item: &str, quantity: i32) -> (String, String, i32) {
    (id.to_owned(), item.to_owned(), quantity)
}

#[tokio::test]
async fn a_batch_delivered_twice_writes_each_order_once() {
    let env = WorkerEnv::start(&[]).await;
    let event = batch(&[("m-1", &order("tea", 1)), ("m-2", &order("coffee", 2)), ("m-3", &order("cocoa", 3))]);

    let first = env.api.invoke(event.clone()).await;
    assert_eq!(failed_ids(first.response()), Vec::<String>::new(), "{:?}", first.outcome);
    let second = env.api.invoke(event).await;
    assert_eq!(failed_ids(second.response()), Vec::<String>::new(), "a redelivery is not a failure");

    assert_eq!(
        orders_by_message(&env.pg).await,
        vec![row("m-1", "tea", 1), row("m-2", "coffee", 2), row("m-3", "cocoa", 3)],
        "each message written once"
    );
}

#[tokio::test]
async fn a_duplicate_inside_one_batch_is_written_once() {
    let env = WorkerEnv::start(&[]).await;
    let answer = env.api.invoke(batch(&[("m-1", &order("tea", 1)), ("m-1", &order("tea", 1))])).await;
    assert_eq!(failed_ids(answer.response()), Vec::<String>::new());
    assert_eq!(orders_by_message(&env.pg).await, vec![row("m-1", "tea", 1)]);
}

#[tokio::test]
async fn exactly_the_bad_record_is_reported_and_the_others_are_written() {
    let env = WorkerEnv::start(&[]).await;
    let event = batch(&[
        ("m-1", &order("tea", 1)),
        ("m-2", r#"{"item": "coffee", "quantity": 0}"#),
        ("m-3", &order("cocoa", 3)),
    ]);
    let answer = env.api.invoke(event).await;
    assert_eq!(failed_ids(answer.response()), vec!["m-2"]);
    assert_eq!(orders_by_message(&env.pg).await, vec![row("m-1", "tea", 1), row("m-3", "cocoa", 3)]);
    assert!(
        env.function.output().contains("quantity must be between 1"),
        "the reason is logged:\n{}",
        env.function.output()
    );
}

#[tokio::test]
async fn every_kind_of_invalid_body_is_reported() {
    let env = WorkerEnv::start(&[]).await;
    let bad = [
        "not json",
        "",
        "[1, 2]",
        r#"{"item": "tea"}"#,
        r#"{"item": "  ", "quantity": 2}"#,
        r#"{"item": "tea", "quantity": 2147483648}"#,
        r#"{"item": "tea", "quantity": 2, "price": 3}"#,
    ];
    let ids: Vec<String> = (0..bad.len()).map(|i| format!("bad-{i}")).collect();
    let mut messages: Vec<(&str, &str)> = ids.iter().map(String::as_str).zip(bad).collect();
    let good = order("tea", 1);
    messages.push(("good", &good));
    let answer = env.api.invoke(batch(&messages)).await;
    assert_eq!(failed_ids(answer.response()), ids);
    assert_eq!(orders_by_message(&env.pg).await, vec![row("good", "tea", 1)]);
}

#[tokio::test]
async fn a_record_the_database_refuses_is_reported_and_the_others_are_written() {
    let env = WorkerEnv::start(&[]).await;
    // Valid JSON and a valid order, but PostgreSQL refuses NUL in text
    // (22021): a permanent error, for this record only.
    let refused = r#"{"item": "te\u0000a", "quantity": 1}"#;
    let event = batch(&[("m-1", &order("tea", 1)), ("m-2", refused), ("m-3", &order("cocoa", 3))]);
    let answer = env.api.invoke(event).await;
    assert_eq!(failed_ids(answer.response()), vec!["m-2"], "{:?}", answer.outcome);
    assert_eq!(orders_by_message(&env.pg).await, vec![row("m-1", "tea", 1), row("m-3", "cocoa", 3)]);
    assert!(env.function.output().contains("SQLSTATE 22021"), "the server refused it:\n{}", env.function.output());
}

#[tokio::test]
async fn the_whole_batch_fails_while_the_database_is_down_and_its_redelivery_writes_once() {
    let env = WorkerEnv::start(&[("DB_RETRY_ATTEMPTS", "2"), ("DB_RETRY_BASE_DELAY_MS", "50")]).await;
    let event = batch(&[("m-1", &order("tea", 1)), ("m-2", &order("coffee", 2))]);
    let first = env.api.invoke(batch(&[("m-0", &order("milk", 1))])).await;
    assert_eq!(failed_ids(first.response()), Vec::<String>::new());

    env.pg.stop().await;
    let options = InvokeOptions::default().function_timeout(Duration::from_secs(5));
    let down = env.api.invoke_with(event.clone(), options).await;
    assert!(
        down.outcome.is_error(),
        "a transient failure fails the invocation, so SQS redelivers the batch: {:?}",
        down.outcome
    );

    env.pg.start_again().await;
    let redelivered = env.api.invoke(event).await;
    assert_eq!(failed_ids(redelivered.response()), Vec::<String>::new(), "{:?}", redelivered.outcome);
    assert_eq!(
        orders_by_message(&env.pg).await,
        vec![row("m-0", "milk", 1), row("m-1", "tea", 1), row("m-2", "coffee", 2)]
    );
}

#[tokio::test]
async fn a_record_without_a_message_id_fails_the_batch_before_any_write() {
    let env = WorkerEnv::start(&[]).await;
    let mut event = batch(&[("m-1", &order("tea", 1)), ("m-2", &order("coffee", 2))]);
    event["Records"][1].as_object_mut().expect("a record is an object").remove("messageId");
    let answer = env.api.invoke(event).await;
    assert_eq!(answer.outcome.error_message(), Some("record 1 of the batch has no messageId"), "{:?}", answer.outcome);
    assert_eq!(answer.outcome.error_type(), Some("OrdersWorker.InvalidBatch"));
    assert_eq!(orders_by_message(&env.pg).await, vec![]);
}

#[tokio::test]
async fn the_fixture_in_the_repo_reports_its_one_bad_record() {
    let env = WorkerEnv::start(&[]).await;
    let event: Value = serde_json::from_str(SQS_EVENT).expect("sqs-orders.json is JSON");
    let ids: Vec<&str> =
        event["Records"].as_array().expect("records").iter().map(|r| r["messageId"].as_str().expect("id")).collect();
    let answer = env.api.invoke(event.clone()).await;
    assert_eq!(failed_ids(answer.response()), vec![ids[2]], "the third record has an empty item");
    assert_eq!(orders_by_message(&env.pg).await.len(), 2);
}
