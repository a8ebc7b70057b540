"""jaxgen.io."""
