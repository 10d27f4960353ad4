"""Training that writes files every tool already reads: LoRA, embeddings, fine-tunes, tiny models."""
