"""Model rollout: the canary verdict and its watch, the registry's aliases as variants, drift."""
