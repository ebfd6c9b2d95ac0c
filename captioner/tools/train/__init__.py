"""`captioner train`: fine-tune on a COCO-format set with transformers' Trainer."""
