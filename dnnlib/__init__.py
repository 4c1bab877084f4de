"""Miscellaneous utilities (attribute dicts, dotted-name lookup, downloads with a cache)."""

from .util import EasyDict, make_cache_dir_path
