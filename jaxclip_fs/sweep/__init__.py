"""From features (or images) to result records: one evaluation, and sweeps at scale.

* ``evaluate`` -- one method on one (shots, seed) task of a feature file;
  ``image_methods`` -- LDC, TA++, TX++ from a dataset and a CLIP.
* The sweep engine (``jaxclip-fs run`` / ``demo``): ``engine.run_sweep`` plans
  cells (``cells``) into compiled programs, builds their stacked, padded,
  masked arrays (``batch``), runs them vmapped and sharded over the devices
  (``program``, ``sharding``), writes records / params / manifest into a
  resumable directory (``outdir``); ``ood`` adds out-of-distribution test
  sets, ``image_programs`` the image methods; ``command`` and ``demo`` are
  the CLI glue.
"""
