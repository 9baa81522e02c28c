"""xfm.text: Language encoder (BERT/RoBERTa), tokenizer, text masking, Hugging Face import."""

__version__ = "0.1.0"
