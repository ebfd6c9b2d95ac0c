"""Redis, shared by the replicas: one client that fails fast and recovers (``redis_client``), and the stores on
it: the cache's second level, the rate limiter's token buckets, and the durable job queue's stream and records
(``job_stream``). A cache or limiter store that is down never fails a request; the job queue, which jobs rely on,
answers 503 instead."""
