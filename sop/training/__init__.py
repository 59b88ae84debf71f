"""Training: the reusable behaviour-cloning update (`trainer.BCTrainer`) and the offline `sop train bc` loop."""
