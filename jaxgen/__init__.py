"""jaxgen: MVLD, DIMVIDA, Diff-Mix, Softlabel-GAN and LR-GMM-NN in one JAX/Flax library."""

__version__ = "0.1.0"
