"""The parts of the training recipe (vidtune.train): typed settings, data, model and method, launching
(torchrun, srun, DeepSpeed), checkpoints and signals, progress. The training data is checked before (the
check_training_data step, vidtune.check_training_data); the recipe trusts what it is given."""
