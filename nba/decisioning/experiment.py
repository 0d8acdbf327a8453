"""The experiment layer's randomness: stable hashes, not a random generator.

* The universal hold-out is chosen by a salted hash of the customer id, so a customer is in
  or out of it on every server, after every restart and in every batch, and changing the
  salt is the only way to reshuffle it.
* The exploration draw of a decision is a hash of its decision id: reproducible from the log
  (anyone can recompute why a decision explored), independent of the hold-out hash.

The hash is SplitMix64 (Steele, Lea & Flood 2014) over the id xor a 64-bit digest of the
salt, vectorised in numpy: a million customers take a few milliseconds, and the same code
serves one request.
"""

from __future__ import annotations

import functools
import hashlib

import numpy as np

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


@functools.cache
def salt_key(salt: str) -> np.uint64:
    return np.uint64(int.from_bytes(hashlib.blake2b(salt.encode(), digest_size=8).digest(), "little"))


def splitmix64(x: np.ndarray) -> np.ndarray:
    z = np.asarray(x, dtype=np.uint64) + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


_MASK = (1 << 64) - 1


def _splitmix_int(x: int) -> int:
    z = (x + 0x9E3779B97F4A7C15) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


def unit_hash(ids: np.ndarray, salt: str) -> np.ndarray:
    """A uniform number in [0, 1) per id, stable for a given salt."""
    ids = np.asarray(ids)
    if ids.size == 1:  # one request: Python integers, the same numbers without numpy's overhead
        x = int(ids.reshape(-1)[0]) & _MASK
        return np.array([(_splitmix_int(x ^ int(salt_key(salt))) >> 11) * (1.0 / (1 << 53))])
    with np.errstate(over="ignore"):
        z = splitmix64(np.asarray(ids).astype(np.int64).view(np.uint64) ^ salt_key(salt))
    return (z >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def in_holdout(customer_ids: np.ndarray, salt: str, share: float) -> np.ndarray:
    """Whether each customer is in the universal hold-out."""
    return unit_hash(customer_ids, salt) < share


def decision_keys(decision_ids: list[str] | np.ndarray) -> np.ndarray:
    """64-bit integers from 32-hex-digit decision ids: the two halves xor-ed, so ids that share
    a prefix (a batch's sequential ids) still get distinct keys (the hash then spreads them)."""
    return np.array([int(d[:16], 16) ^ int(d[16:32], 16) for d in decision_ids], dtype=np.uint64).view(np.int64)
