"""Every outbound HTTP call: URL input, job callbacks, the drift webhook; one SSRF policy."""
