//! The order a client sends, as JSON: `{"item": "...", "quantity": N}`.
//!
//! The body of `POST /orders` and of each `orders-worker` message. Unknown
//! fields are refused, so a typo (`"quantiy"`) is an error, not a default.

use serde::Deserialize;

/// An order that passed validation, ready to insert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOrder {
    /// What was ordered; not blank.
    pub item: String,
    /// How many; at least 1, and fits the `integer` column.
    pub quantity: i32,
}

/// Why a body is not a valid order. The message is fit to show the sender.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidOrder {
    /// Not JSON, not an object, a field missing, unknown or of the wrong type.
    #[error("the body is not a valid order: {0}")]
    Malformed(#[source] serde_json::Error),
    /// `item` is empty or only whitespace.
    #[error("item must not be empty")]
    EmptyItem,
    /// `quantity` is below 1 or above the column's range.
    #[error("quantity must be between 1 and {}", i32::MAX)]
    QuantityOutOfRange,
}

/// The wire form. `quantity` is read wide so that an out-of-range number is
/// reported as such, not as a parse error.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    item: String,
    quantity: i64,
}

impl NewOrder {
    /// Parses and validates a JSON order.
    ///
    /// # Errors
    ///
    /// [`InvalidOrder`] saying what is wrong with `json`.
    pub fn parse(json: &[u8]) -> Result<Self, InvalidOrder> {
        let wire: Wire = serde_json::from_slice(json).map_err(InvalidOrder::Malformed)?;
        if wire.item.trim().is_empty() {
            return Err(InvalidOrder::EmptyItem);
        }
        let quantity = i32::try_from(wire.quantity).ok().filter(|q| *q > 0).ok_or(InvalidOrder::QuantityOutOfRange)?;
        Ok(Self { item: wire.item, quantity })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_order_parses() {
        let order = NewOrder::parse(br#"{"item": "tea", "quantity": 3}"#).expect("valid");
        assert_eq!(order, NewOrder { item: "tea".to_owned(), quantity: 3 });
    }

    #[test]
    fn bad_orders_say_what_is_wrong() {
        let cases: [(&str, &str); 9] = [
            ("not json", "the body is not a valid order"),
            (r#"{"item": "tea"}"#, "missing field `quantity`"),
            (r#"{"item": "tea", "quantity": 2, "price": 3}"#, "unknown field `price`"),
            (r#"{"item": "tea", "quantity": "2"}"#, "the body is not a valid order"),
            (r#"{"item": "tea", "quantity": 1.5}"#, "the body is not a valid order"),
            (r#"{"item": " ", "quantity": 2}"#, "item must not be empty"),
            (r#"{"item": "tea", "quantity": 0}"#, "quantity must be between 1 and 2147483647"),
            (r#"{"item": "tea", "quantity": -1}"#, "quantity must be between 1 and 2147483647"),
            (r#"{"item": "tea", "quantity": 2147483648}"#, "quantity must be between 1 and 2147483647"),
        ];
        for (body, expected) in cases {
            let message = NewOrder::parse(body.as_bytes()).expect_err(body).to_string();
            assert!(message.contains(expected), "{body}: {message}");
        }
    }
}
