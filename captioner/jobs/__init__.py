"""Async jobs: records, the queue (in process or durable on Redis Streams), the worker and the manager."""
