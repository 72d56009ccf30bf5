"""stability: small-scale proxies for large-scale Transformer training instabilities."""
__version__ = "0.1.0"
