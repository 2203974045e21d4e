"""`qkscale verify`: find every damaged, missing or inconsistent file of a store, and repair them."""

from qkscale.verify.checks import Problem, verify_store
from qkscale.verify.repair import repair_store

__all__ = ["Problem", "repair_store", "verify_store"]
