"""Built-in reasoning tasks: generators, prompts, answer checking, evaluation."""
