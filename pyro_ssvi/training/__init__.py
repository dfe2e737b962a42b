"""The pieces of the training application (:mod:`pyro_ssvi.train` is its entry point):

- :mod:`~pyro_ssvi.training.rundir`: the run directory, claimed so that no run replaces another's;
- :mod:`~pyro_ssvi.training.resume`: continuing from a checkpoint, overrides applied or refused;
- :mod:`~pyro_ssvi.training.evaluation`: metrics reproducible from a checkpoint, FLOPs, the summary.
"""
