"""State shared by replicas through Redis, each piece optional and never a reason to fail a request."""
