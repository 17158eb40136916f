//! What the example functions share.
//!
//! - [`order`]: the order a client sends (`{"item": "...", "quantity": N}`),
//!   the body of `POST /orders` and of each `orders-worker` message, and its
//!   validation.
//! - [`orders_api`]: what `orders` and `orders-axum` share: the statements
//!   and the stored order.
#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

pub mod order;
pub mod orders_api;
