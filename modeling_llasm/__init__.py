"""LLaSM: Whisper encoder -> modal adaptor -> decoder-only LLM, as a transformers plugin."""
