"""LR-GMM-NN (paper 004): low-rank Gaussian mixture latent model with nearest-neighbour refinement."""
