"""Device mesh, shardings and multi-host helpers."""

from jaxgen.parallel.mesh import (DATA, MODEL, batch_sharding, data_parallel_size,
                                  initialize_distributed, is_main_process, make_mesh, replicate,
                                  replicated, shard_batch)

__all__ = ["DATA", "MODEL", "batch_sharding", "data_parallel_size", "initialize_distributed",
           "is_main_process", "make_mesh", "replicate", "replicated", "shard_batch"]
