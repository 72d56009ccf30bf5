"""stability: small-scale proxies for large-scale Transformer training instabilities."""
__version__ = "0.1.0"

_ATTACH = ("Monitor", "observe_attention_logits", "observe_qk")  # stability.attach, imported on first use


def __getattr__(name: str):
    """`stability.Monitor` and the attention hooks without importing torch at `import stability`."""
    if name in _ATTACH:
        from . import attach
        return getattr(attach, name)
    raise AttributeError(f"module 'stability' has no attribute {name!r}")
