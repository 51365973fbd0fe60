"""Distributed worlds: the ``composable_world`` and ``composable_fake_world`` fixtures.

Layout, top to bottom (a module imports only modules below it):

* :mod:`.plugin` - the pytest hooks and fixtures;
* :mod:`._pool` (main process: rank pools), :mod:`._warm` (warm start: ranks forked
  from a template process), :mod:`._rank` (the rank side), :mod:`._launched` (sessions
  launched by torchrun, srun or mpirun), :mod:`._fake` (the fake world);
* :mod:`._protocol` (every message between the main process and its ranks),
  :mod:`._rank_args`, :mod:`._reports`, :mod:`._policy`, :mod:`._options`;
* :mod:`.world` (:class:`~.world.World`, public), :mod:`._constants`.

Importing this package, or :mod:`.plugin`, imports no torch.
"""
