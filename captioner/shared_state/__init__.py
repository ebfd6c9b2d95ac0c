"""State shared by replicas through Redis: the second cache level and job records, each optional and never a
reason to fail a request, and the durable job queue's stream (``jobs.queue: redis``), which jobs then rely on."""
