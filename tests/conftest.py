"""Test-session settings: the JAX compilation cache of the apps goes to a temporary directory
(never the user's ``~/.cache/tpfl_jax/jax``)."""

from __future__ import annotations

import os

import pytest

from tpfl_jax.validate import COMPILE_CACHE_ENV


@pytest.fixture(autouse=True, scope="session")
def _compile_cache_in_tmp(tmp_path_factory):
    old = os.environ.get(COMPILE_CACHE_ENV)
    os.environ[COMPILE_CACHE_ENV] = str(tmp_path_factory.mktemp("jax_cache"))
    yield
    if old is None:
        os.environ.pop(COMPILE_CACHE_ENV, None)
    else:
        os.environ[COMPILE_CACHE_ENV] = old
