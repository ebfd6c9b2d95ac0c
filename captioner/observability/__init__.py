"""What operators see: Prometheus series, GPU metrics, structured logs, and the PSI statistics behind drift alerts."""
