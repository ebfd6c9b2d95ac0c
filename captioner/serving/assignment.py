"""A/B assignment: what a request's variant sticks to (``pick`` in variants.py turns it into a variant).

- By default, the image: its SHA-256. A variant at weight ``w`` then answers a share ``w`` of the distinct
  images, whoever sends them, and the same image always gets the same variant (and its cache entry).
- A caller that wants one end user kept on one variant across images sends ``X-Assignment-Key: <opaque>``
  (checked and read by the HTTP layer, http/assignment.py); the share is then one of those keys.
- Never the API key. A deployment has a few service keys, each carrying many users: by key, a 10 % canary gets
  0 % or 100 % of each key's traffic, so it may see none at all and never be judged (issue 21: one key, 90/10,
  2,000 distinct images, the canary answered 0).

The two kinds of key live in separate namespaces, so no assignment key can pose as an image.
"""

from __future__ import annotations


def sticky_key(image_sha256: str, assignment_key: str | None) -> str:
    """The key A/B routing hashes for this request: the caller's assignment key if it sent one, else the image."""
    if assignment_key is not None:
        return "user:" + assignment_key
    return "image:" + image_sha256  # the prefix the server has always used: images keep their variant
