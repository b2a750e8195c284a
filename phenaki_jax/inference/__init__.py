"""Running trained models: the story decoder and the tokenizer."""
