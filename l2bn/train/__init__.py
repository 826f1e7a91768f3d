"""Training: one run or K runs side by side, on one engine (config, device, data, models, tasks,
optimizers, the loop and its records). Nothing here knows about Optuna or prints."""
