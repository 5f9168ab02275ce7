"""The SLURM side of the apps: which job a process belongs to (:mod:`.job`), the config resolvers
that size a job and name its run folder (:mod:`.resolvers`), and the Hydra launcher that submits
sweeps and study stages and reports on their jobs (:mod:`.launcher`).

A run on a cluster is a job: a requeued or preempted job continues its own run folder from
``last.ckpt``; nothing here assumes the submitting process and the job share a host or a pid
space. See docs/cluster.md.
"""
