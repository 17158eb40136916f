//! `orders-worker`: an SQS queue consumer on top of runtime-adapter. Copy it
//! as a starting point for batch work.
//!
//! - Each message body is an order, the same JSON as the body of
//!   `POST /orders`: `{"item": "...", "quantity": N}`.
//! - **Idempotent writes.** SQS delivers at least once, so the message id is
//!   a unique key (`orders.message_id`) and the insert is
//!   `ON CONFLICT (message_id) DO NOTHING`: a redelivered message writes
//!   nothing. That also makes the insert safe for the adapter to retry after
//!   a connection failure (`Db::idempotent`).
//! - **Partial batch failures** (the event source has
//!   `FunctionResponseTypes: [ReportBatchItemFailures]`): a record whose body
//!   is not a valid order, or whose insert fails with a permanent error (bad
//!   data, a constraint), is returned in `batchItemFailures`. SQS deletes the
//!   others and redelivers only those, until the queue's `maxReceiveCount`
//!   moves them to the dead-letter queue.
//! - **Transient failures fail the whole batch.** When the database stays
//!   unreachable past the adapter's retries, the invocation returns an
//!   error: SQS redelivers the whole batch (records already written are
//!   no-ops) and Lambda's poller backs off, instead of marching every message
//!   towards the dead-letter queue while the database is down.
//! - **Errors keep their type.** The handler's error, [`BatchError`],
//!   converts from `runtime_adapter::Error` (so `?` works) and into
//!   lambda_runtime's `Diagnostic`, keeping the adapter's `errorType`
//!   (`RuntimeAdapter.DatabaseUnavailable`, …) and giving a batch it
//!   refuses its own, `OrdersWorker.InvalidBatch`.
//!
//! Schema: `example-functions/migrations/` (0001 and 0002).

use aws_lambda_events::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use example_functions::order::{InvalidOrder, NewOrder};
use runtime_adapter::{Adapter, Db, Diagnostic, ErrorKind, LambdaEvent};
use tracing::{info, warn};

/// Declared to the adapter: prepared on every connection at INIT, so a
/// database without migration 0002 fails INIT naming `message_id`.
const INSERT_ORDER: &str = "INSERT INTO orders (message_id, item, quantity) VALUES ($1, $2, $3) \
                            ON CONFLICT (message_id) DO NOTHING";

fn main() -> Result<(), lambda_runtime::Error> {
    // Honours AWS_LAMBDA_LOG_FORMAT and AWS_LAMBDA_LOG_LEVEL.
    lambda_runtime::tracing::init_default_subscriber();
    // One thread unless Lambda runs several invocations at once.
    runtime_adapter::tokio_runtime()?.block_on(Adapter::builder().statement(INSERT_ORDER).run(handle))
}

/// What became of one record.
enum Outcome {
    Written,
    /// Its message id was already there: a redelivery.
    Duplicate,
    /// To be reported in `batchItemFailures`.
    Failed(Failure),
}

/// Why a record is reported as failed.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error(transparent)]
    Invalid(#[from] InvalidOrder),
    #[error("the message has no body")]
    NoBody,
    #[error("the insert failed and retrying cannot help: {0}")]
    Permanent(#[source] runtime_adapter::Error),
}

/// Why the whole batch fails. Lambda's `errorType` says which: the
/// adapter's own for a database failure, `OrdersWorker.InvalidBatch` for a
/// batch the worker refuses.
#[derive(Debug, thiserror::Error)]
enum BatchError {
    #[error("record {position} of the batch has no messageId")]
    NoMessageId { position: usize },
    #[error(transparent)]
    Database(#[from] runtime_adapter::Error),
}

impl From<BatchError> for Diagnostic {
    fn from(error: BatchError) -> Self {
        match error {
            BatchError::Database(error) => error.into(),
            invalid @ BatchError::NoMessageId { .. } => {
                Diagnostic { error_type: "OrdersWorker.InvalidBatch".to_owned(), error_message: invalid.to_string() }
            }
        }
    }
}

async fn handle(db: Db, event: LambdaEvent<SqsEvent>) -> Result<SqsBatchResponse, BatchError> {
    let records = event.payload.records;
    // Without a message id a record can be neither deduplicated nor
    // reported: refuse the batch before writing anything.
    if let Some(position) = records.iter().position(|r| r.message_id.as_deref().is_none_or(str::is_empty)) {
        return Err(BatchError::NoMessageId { position });
    }

    let mut response = SqsBatchResponse::default();
    let (mut written, mut duplicates) = (0_usize, 0_usize);
    for record in &records {
        let message_id = record.message_id.as_deref().unwrap_or_default();
        match process(&db, message_id, record).await? {
            Outcome::Written => written += 1,
            Outcome::Duplicate => duplicates += 1,
            Outcome::Failed(failure) => {
                warn!(message_id, error = %failure, "record failed; reported in batchItemFailures");
                response.add_failure(message_id);
            }
        }
    }
    info!(records = records.len(), written, duplicates, failed = response.batch_item_failures.len(), "batch done");
    Ok(response)
}

/// Validates and inserts one record. `Err` (a transient failure the adapter
/// could not retry away) fails the whole batch.
async fn process(db: &Db, message_id: &str, record: &SqsMessage) -> Result<Outcome, runtime_adapter::Error> {
    let order =
        match record.body.as_deref().ok_or(Failure::NoBody).and_then(|body| Ok(NewOrder::parse(body.as_bytes())?)) {
            Ok(order) => order,
            Err(failure) => return Ok(Outcome::Failed(failure)),
        };
    match db.idempotent().execute(INSERT_ORDER, &[&message_id, &order.item, &order.quantity]).await {
        Ok(0) => Ok(Outcome::Duplicate),
        Ok(_) => Ok(Outcome::Written),
        Err(e) if e.kind() == ErrorKind::Permanent => Ok(Outcome::Failed(Failure::Permanent(e))),
        Err(e) => Err(e),
    }
}
