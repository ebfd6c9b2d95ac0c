"""Offline commands: caption files, evaluate on a COCO set, save a drift reference, write an untrained model,
draw a synthetic captioning set, and train."""
