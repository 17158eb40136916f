//! What the example functions share.
//!
//! - [`order`]: the order a client sends (`{"item": "...", "quantity": N}`),
//!   the body of `POST /orders` and of each `orders-worker` message, and its
//!   validation.
#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

pub mod order;
