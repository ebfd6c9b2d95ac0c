"""User feedback on captions: records, their stores (files or Redis), per-variant approval."""
