"""The generic GFlowNet core: DAG environments, sampling, losses, training, HyperGrid."""
