//! The example functions' schema: every file in `example-functions/migrations/`,
//! applied in file-name order (`0001_…`, `0002_…`), as a deployment would.
//!
//! Read from the source tree when called, so a new migration is picked up
//! without touching the harness.

use std::path::{Path, PathBuf};

use crate::Postgres;

/// One migration file.
#[derive(Debug, Clone)]
pub struct Migration {
    /// File name, e.g. `0001_orders.sql`.
    pub name: String,
    /// Its SQL.
    pub sql: String,
}

/// `example-functions/migrations/`.
#[must_use]
pub fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../example-functions/migrations")
}

/// Every migration, in the order they apply. Panics if the folder cannot be
/// read or holds none.
#[must_use]
pub fn all() -> Vec<Migration> {
    let dir = dir();
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display()));
    let mut migrations: Vec<Migration> = entries
        .map(|entry| entry.unwrap_or_else(|e| panic!("list {}: {e}", dir.display())).path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "sql"))
        .map(|path| Migration {
            name: path.file_name().expect("a file has a name").to_string_lossy().into_owned(),
            sql: std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display())),
        })
        .collect();
    migrations.sort_by(|a, b| a.name.cmp(&b.name));
    assert!(!migrations.is_empty(), "no migrations in {}", dir.display());
    migrations
}

/// Applies every migration as the `app` role (which then owns the objects)
/// and returns their names.
pub async fn apply_all(pg: &Postgres) -> Vec<String> {
    let migrations = all();
    for migration in &migrations {
        pg.apply_sql_as_app(&migration.sql).await;
    }
    migrations.into_iter().map(|m| m.name).collect()
}
