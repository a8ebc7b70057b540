"""Small helpers shared by jaxgen's Flax modules."""


def group_count(channels: int, preferred: int = 8) -> int:
  """The largest number of GroupNorm groups <= `preferred` that divides `channels`."""
  groups = min(preferred, channels)
  while channels % groups:
    groups -= 1
  return groups
