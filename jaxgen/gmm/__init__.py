"""jaxgen.gmm: Gaussian mixtures and the pieces of LR-GMM-NN (paper 004).

- `fit_gmm`, `score_samples`, `predict_proba`, `sample`: EM with scikit-learn's semantics in one
  compiled `lax.while_loop`, sharded over the mesh's data axis (`jaxgen.gmm.em`);
- `jaxgen.gmm.pca`: the P0 projector (eqs. 1-2);
- `jaxgen.gmm.lowrank`: low-rank sampling (eqs. 3-4);
- `jaxgen.gmm.nn_projection`: the nearest-neighbour patch projection (eqs. 5-6).
"""

from jaxgen.gmm.em import GaussianMixture, component_log_probs, fit_gmm, predict_proba, sample, score_samples

__all__ = ["GaussianMixture", "component_log_probs", "fit_gmm", "predict_proba", "sample", "score_samples"]
