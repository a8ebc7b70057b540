"""jaxgen.data."""
