"""lmgate: one OpenAI/Anthropic-compatible endpoint in front of many LLM upstreams."""

__version__ = "0.1.0"
