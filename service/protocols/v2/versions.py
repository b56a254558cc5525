"""Triton version numbers: V2 names each model version by a positive integer, as Triton's model
repository does (perf_analyzer parses the statistics' `version` as one and looks its numbers up
again as text), derived from the store tag: `v2-20261203003208-732` -> `20261203003208732`, its
creation time to the millisecond, so that a newer version has a higher number (Triton's "latest").

Requests name a version by its number or by its tag; answers (metadata, statistics, inference,
the repository index) give the number. /v1 and the task gRPC service keep the tag.
"""

from __future__ import annotations

import functools
import re

from service.runners.repository import ServingState

STORE_TAG = re.compile(r"v[^-]+-(\d{14})-(\d{3})")
"""A version tag as service/store/register.py writes it: v<spec version>-<UTC time>-<ms>."""


@functools.cache  # every V2 answer names its version; a server holds a few tags
def number(tag: str) -> str:
    """The version number of a store tag (its digits for a tag of another shape, e.g. "v1")."""
    match = STORE_TAG.fullmatch(tag)
    digits = match[1] + match[2] if match else "".join(c for c in tag if c.isdigit())
    return str(int(digits)) if digits else tag


def tag(serving: ServingState, name: str, version: str | None) -> str | None:
    """The served tag that `version` (a number or a tag) names; unknown ones are passed on as
    they are, so that the repository's not-found answer names them."""
    if not version or not version.isdigit():
        return version or None
    served = serving.versions.get(name, {})
    return next((t for t in served if number(t) == version), version)
