-- For `orders-worker`: the SQS message id an order came from. Unique, so a
-- redelivered message (SQS delivers at least once) writes nothing the second
-- time (`INSERT ... ON CONFLICT (message_id) DO NOTHING`). Nullable: orders
-- created through the HTTP API have none, and NULLs never conflict.
ALTER TABLE orders ADD COLUMN IF NOT EXISTS message_id text UNIQUE;
