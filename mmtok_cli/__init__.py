"""mmtok: run Hugging Face vision-language models with MMTok vision-token pruning."""

__version__ = "0.1.0"
