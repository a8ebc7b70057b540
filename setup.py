"""jaxgen: five published generative-modeling methods in one JAX/Flax library."""

import setuptools

# Versions pinned together: this exact set was installed and tested side by side (CPU, Python 3.11).
INSTALL_REQUIRES = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "grain==0.2.18",
    "tensorflow-datasets==4.9.10",
    "ml-collections==1.1.0",
    "scikit-learn==1.9.1",
    "numpy>=2.0,<3",
    # TensorBoard event files without TensorFlow (clu's writers would pull in TF, +1.4 GB, so clu
    # is not a dependency: nothing here needs its metrics or periodic actions).
    "tensorboardX==2.6.5",
    "pillow>=10",
    # The one path layer (jaxgen.io.paths): workdirs, data and weights as fsspec URLs.
    "fsspec==2026.9.0",
    "absl-py>=2.1",
]

EXTRAS_REQUIRE = {
    # Reference libraries the tests compare against, and the runner.
    "test": ["pytest>=8", "pytest-xdist>=3.5", "scikit-image>=0.24", "scipy>=1.13",
             # executing the Colab notebooks (tests/notebooks.py)
             "nbclient==0.11.0", "nbformat==5.11.1", "ipykernel==7.4.0"],
    # Opt-in PyTorch parity group (multi-GB): see README "PyTorch parity tests".
    "torch": [
        "torch==2.14.1", "torchvision==0.29.1", "lpips==0.1.4",
        # Stable Diffusion parity: the diffusers/transformers modules our importers are checked against.
        "diffusers==0.42.1", "transformers==5.24.0", "safetensors>=0.4",
    ],
    # Workdirs and data on Cloud Storage (gs://) through jaxgen.io.paths; other fsspec protocols
    # need their own package (s3fs for s3://, adlfs for az://).
    "gcs": ["gcsfs==2026.10.1"],
    # Accelerators: install the matching jax build instead of the CPU one.
    "cuda": ["jax[cuda12]==0.10.2"],
    "tpu": ["jax[tpu]==0.10.2"],
}

setuptools.setup(
    name="jaxgen",
    version="0.1.0",
    description="MVLD, DIMVIDA, Diff-Mix, Softlabel-GAN and LR-GMM-NN in JAX/Flax.",
    packages=setuptools.find_packages(include=["jaxgen", "jaxgen.*"]),
    python_requires=">=3.11",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
)
