"""Tests of the REST service (detmix_service) and its client (detmix.client).

A package, so that this folder's conftest does not shadow tests/conftest.py (both would be
imported as ``conftest`` otherwise).
"""
