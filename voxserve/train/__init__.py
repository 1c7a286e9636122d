"""Training: synthetic speech data (espeak-ng), manifests, augmentation, the training loop and checkpoints."""
