"""The data path after parsing: hash -> cache -> preprocess -> batcher -> model, per A/B variant, sync or as a job
(the job queue, in process or durable on Redis Streams, and the worker that consumes it)."""
