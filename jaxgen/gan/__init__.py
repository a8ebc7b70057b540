"""jaxgen.gan."""
