"""jaxgen.data: sources (renderer, digits, TFDS, image folder, NMR), grain pipelines, imbalance builders.

Heavy modules (tfds, PIL decoding, the renderer) load only when their source is requested.
"""

from jaxgen.data.imbalance import (Subset, few_shot_indices, long_tail_counts,
                                   long_tail_indices, softlabel_gan_counts,
                                   softlabel_gan_indices)
from jaxgen.data.pipeline import Loader, augment_record, make_loader, resize_center_crop
from jaxgen.data.sources import (ArraySource, Record, Source, SubsetSource, get_source,
                                 known_sources, register_source, subset)

__all__ = [
    "ArraySource", "Loader", "Record", "Source", "Subset", "SubsetSource", "augment_record",
    "few_shot_indices", "get_source", "known_sources", "long_tail_counts", "long_tail_indices",
    "make_loader", "register_source", "resize_center_crop", "softlabel_gan_counts",
    "softlabel_gan_indices", "subset",
]
