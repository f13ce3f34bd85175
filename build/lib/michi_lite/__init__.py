"""michi_lite: a small, readable full-duplex speech LLM in the style of MichiAI."""

__version__ = "0.1.0"
