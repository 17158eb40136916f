//! What `orders` and `orders-axum` share, so that the two serve the same API:
//! the statements they declare to the adapter, and an order as stored and
//! answered.

use chrono::{DateTime, Utc};
use runtime_adapter::Row;
use serde::Serialize;

/// Declared to the adapter: prepared on every connection at INIT, so a
/// schema problem fails INIT and no invocation pays a prepare.
pub const GET_ORDER: &str = "SELECT id, item, quantity, created_at FROM orders WHERE id = $1";
/// Declared to the adapter, as [`GET_ORDER`].
pub const INSERT_ORDER: &str =
    "INSERT INTO orders (item, quantity) VALUES ($1, $2) RETURNING id, item, quantity, created_at";

/// An order as stored, and as the API answers it (JSON).
#[derive(Debug, Serialize)]
pub struct Order {
    /// The order's id, from the table's sequence.
    pub id: i64,
    /// What was ordered.
    pub item: String,
    /// How many.
    pub quantity: i32,
    /// When it was stored (RFC 3339 in JSON).
    pub created_at: DateTime<Utc>,
}

impl Order {
    /// The order in a row of [`GET_ORDER`] or [`INSERT_ORDER`].
    ///
    /// # Errors
    ///
    /// A column missing or of another type.
    pub fn from_row(row: &Row) -> Result<Self, runtime_adapter::tokio_postgres::Error> {
        Ok(Self {
            id: row.try_get("id")?,
            item: row.try_get("item")?,
            quantity: row.try_get("quantity")?,
            created_at: row.try_get("created_at")?,
        })
    }
}
