"""Text encoder and tokenizer loading (BERT through Hugging Face `transformers`)."""
from .text_encoder import (
    PACKAGED_MINILM,
    load_text_config,
    load_text_encoder,
    load_tokenizer,
    resolve_text_model,
)

__all__ = ["PACKAGED_MINILM", "load_text_config", "load_text_encoder", "load_tokenizer", "resolve_text_model"]
