"""`captioner eval` and the gate's scoring: COCO metrics on an annotated set."""
