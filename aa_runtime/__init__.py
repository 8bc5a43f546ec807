"""AnimateAnywhere runtime: pose-conditioned video UNet, sampling pipeline, adapters, `aa-run`."""
__version__ = "0.1.0"
