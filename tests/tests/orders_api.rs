//! The `orders` example's HTTP behaviour: creation, lookup, and bad input
//! answered with 400 and nothing written.

use integration_tests::orders::{body, committed_orders, get_order, post_order, post_valid_order, status, OrdersEnv};
use serde_json::Value;

#[tokio::test]
async fn orders_are_created_and_found() {
    let env = OrdersEnv::start(&[]).await;
    let created = env.api.invoke(post_valid_order("coffee beans", 2)).await;
    assert_eq!(status(created.response()), 201);
    assert_eq!(created.response()["headers"]["content-type"], "application/json");
    let order = body(created.response());
    assert_eq!(order["item"], "coffee beans");
    assert_eq!(order["quantity"], 2);
    let id = order["id"].as_i64().expect("numeric id");
    assert!(order["created_at"].as_str().is_some_and(|t| t.contains('T')), "RFC 3339 timestamp: {order}");

    let found = env.api.invoke(get_order(&id.to_string())).await;
    assert_eq!(status(found.response()), 200);
    assert_eq!(body(found.response()), order);

    let missing = env.api.invoke(get_order("999999")).await;
    assert_eq!(status(missing.response()), 404);
    assert_eq!(body(missing.response())["error"], "order 999999 not found");
}

#[tokio::test]
async fn a_base64_encoded_body_is_decoded() {
    let env = OrdersEnv::start(&[]).await;
    let mut event = post_valid_order("tea", 1);
    // base64 of {"item":"tea","quantity":1}
    event["body"] = Value::String("eyJpdGVtIjoidGVhIiwicXVhbnRpdHkiOjF9".to_owned());
    event["isBase64Encoded"] = Value::Bool(true);
    let created = env.api.invoke(event).await;
    assert_eq!(status(created.response()), 201, "{:?}", created.outcome);
}

#[tokio::test]
async fn bad_input_gets_400_and_writes_nothing() {
    let env = OrdersEnv::start(&[]).await;
    let bad_bodies = [
        ("not json", "the body is not a valid order"),
        ("", "the body is not a valid order"),
        (r#"{"item": "tea"}"#, "missing field `quantity`"),
        (r#"{"quantity": 2}"#, "missing field `item`"),
        (r#"{"item": "tea", "quantity": 0}"#, "quantity must be between 1"),
        (r#"{"item": "tea", "quantity": -3}"#, "quantity must be between 1"),
        (r#"{"item": "tea", "quantity": 2147483648}"#, "quantity must be between 1"),
        (r#"{"item": "tea", "quantity": 1.5}"#, "the body is not a valid order"),
        (r#"{"item": "tea", "quantity": "2"}"#, "the body is not a valid order"),
        (r#"{"item": "  ", "quantity": 2}"#, "item must not be empty"),
        (r#"{"item": "tea", "quantity": 2, "price": 3}"#, "unknown field `price`"),
        ("[1, 2]", "the body is not a valid order"),
    ];
    for (bad, expected) in bad_bodies {
        let answer = env.api.invoke(post_order(bad)).await;
        assert_eq!(status(answer.response()), 400, "{bad}: {:?}", answer.outcome);
        let message = body(answer.response())["error"].as_str().expect("error message").to_owned();
        assert!(message.contains(expected), "{bad}: {message}");
    }
    let mut no_body = post_valid_order("tea", 1);
    no_body.as_object_mut().expect("object").remove("body");
    assert_eq!(status(env.api.invoke(no_body).await.response()), 400);

    for bad_id in ["abc", "1.5", "99999999999999999999", "-"] {
        let answer = env.api.invoke(get_order(bad_id)).await;
        assert_eq!(status(answer.response()), 400, "{bad_id}: {:?}", answer.outcome);
        assert_eq!(body(answer.response())["error"], "id must be a whole number");
    }
    assert_eq!(committed_orders(&env.pg).await, [], "nothing was written");

    let mut unknown = get_order("1");
    unknown["rawPath"] = Value::String("/customers/1".to_owned());
    assert_eq!(status(env.api.invoke(unknown).await.response()), 404);
}
