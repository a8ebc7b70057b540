"""jaxgen.classifier."""
