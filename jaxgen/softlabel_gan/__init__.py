"""Softlabel-GAN (paper 003): label augmentation by a classifier's soft labels for a cGAN on imbalanced data."""
