"""Every outbound HTTP call (URL input, job callbacks, webhooks): one client, one SSRF policy, one cap, one retry."""
