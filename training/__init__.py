"""Training side of cmc: data from git repositories, tokenizer, trainer, checkpoints, evaluation."""
