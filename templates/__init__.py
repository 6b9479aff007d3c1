"""Jinja templates rendered by ``regenerate-kernels`` (package data of moe_utils)."""
