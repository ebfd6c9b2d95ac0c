"""`captioner cascade`: calibrate a confidence cascade (a first, cheaper model in front of the main one)."""
