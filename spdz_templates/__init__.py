"""Jinja2 templates of the emitted MP-SPDZ programs (data-only package)."""
