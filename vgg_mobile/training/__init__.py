"""The teacher's training: hyperparameters, schedules, checkpoints, strategies, throughput."""
