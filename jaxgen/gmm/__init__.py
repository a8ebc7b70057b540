"""jaxgen.gmm."""
