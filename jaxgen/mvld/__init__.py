"""jaxgen.mvld."""
