"""jaxgen.nets."""
