"""The learner's Ray backend (`backend: ray`): the trainer as a data-parallel group of Ray actors.

    cluster.py       joins `ray.address` or starts a one-machine cluster, and leaves it on stop
    train_group.py   `RayTrainGroup`: trainer.num_workers actors running DDP (gloo on CPU, NCCL on GPU)

Ray is imported only when the backend is chosen: the local backend needs nothing started.
"""
