"""jaxgen.gan: GAN losses on discriminator logits and DiffAugment (pure functions).

Used by Softlabel-GAN (paper 003 sec. 4.3: BigGAN, hinge loss, DiffAugment
'color,translation,cutout').
"""

from jaxgen.gan.diffaugment import (POLICY_OPS, brightness, contrast, cutout, diff_augment,
                                    parse_policy, saturation, translation)
from jaxgen.gan.losses import LOSSES, discriminator_loss, generator_loss

__all__ = [
    "LOSSES", "discriminator_loss", "generator_loss",
    "POLICY_OPS", "parse_policy", "diff_augment",
    "brightness", "saturation", "contrast", "translation", "cutout",
]
