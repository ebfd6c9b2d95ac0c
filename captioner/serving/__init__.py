"""The data path after parsing: hash -> cache -> preprocess -> batcher -> model, per A/B variant, sync or as a job."""
