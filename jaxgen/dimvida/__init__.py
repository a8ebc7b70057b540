"""DIMVIDA (paper 000): multi-view data augmentation of a single-view classification set with MVLD."""
