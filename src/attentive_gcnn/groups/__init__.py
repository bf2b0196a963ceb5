"""Point groups of the roto-translation groups p4 and p4m (and the trivial z2) and their actions."""

from attentive_gcnn.groups.group import GROUPS, P4, P4M, Z2, Group, get_group

__all__ = ["GROUPS", "P4", "P4M", "Z2", "Group", "get_group"]
