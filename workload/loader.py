"""Source -> ``RequestPool``, through the on-disk cache.

The cache key is computed from cheap identities (file stats, tokenizer file
stats), so a cache hit reads one ``.npz`` and never loads the tokenizer or the
dataset.
"""
from __future__ import annotations

import contextlib
import itertools
import os
import warnings
from typing import Any

from workload import cache as pool_cache
from workload import tokenizer as tok
from workload.config import WorkloadSpec
from workload.expand import TEMPLATE_VERSION, expand_conversations
from workload.jsonarray import ArrayReadStatus
from workload.pool import RequestPool
from workload.sources import azure, mooncake, sharegpt, synthetic, vllm_custom, wildchat


def _file_identity(path) -> dict[str, Any]:
    st = os.stat(path)
    return {"path": str(os.path.realpath(path)), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _base_meta(spec: WorkloadSpec) -> dict[str, Any]:
    return {
        "source": spec.source,
        "block_size": spec.block_size,
        "filters": spec.filters.as_dict(),
        "max_conversations": spec.max_conversations,
    }


def _cached(
    spec: WorkloadSpec, identity: dict[str, Any], cache_dir, build
) -> RequestPool:
    folder = pool_cache.resolve_cache_dir(cache_dir)
    key = pool_cache.cache_key({"spec": _base_meta(spec), "identity": identity})
    path = pool_cache.cache_file(folder, spec.source, key) if folder else None
    if path is not None:
        pool = pool_cache.load_pool(path)
        if pool is not None:
            pool.meta["cache"] = "hit"
            pool.trace.meta["cache"] = "hit"
            return pool
    pool = build()
    if path is not None:
        try:
            pool_cache.save_pool(path, pool)
        except OSError as exc:  # a read-only home, a full disk: run on, uncached
            warnings.warn(f"could not write the workload cache {path} ({exc})", stacklevel=3)
            path = None
    pool.meta.update(cache="miss" if path else "off", cache_file=str(path) if path else None)
    pool.trace.meta.update(cache=pool.meta["cache"], cache_file=pool.meta["cache_file"])
    return pool


def load_pool(
    spec: WorkloadSpec, *, seed: int = 0, cache_dir=None, progress: bool = False
) -> RequestPool:
    """Every request ``spec`` selects, in dataset order (conversations contiguous)."""
    meta = _base_meta(spec)
    limit = spec.max_conversations or None

    if spec.source == "synthetic":  # cheap and seed-dependent: not cached
        meta.update(synthetic=spec.as_dict()["synthetic"], seed=seed, cache="off")
        return synthetic.synthetic_pool(
            spec.synthetic, spec.block_size, spec.filters, seed, meta, progress=progress
        )

    if spec.source == "azure":
        path = azure.azure_path(spec.path)
        meta.update(path=str(path), tokenizer=None)
        return _cached(
            spec,
            {"file": _file_identity(path), "tokens": "keyed_stream-v1"},
            cache_dir,
            lambda: azure.azure_pool(path, spec.block_size, spec.filters, meta, progress=progress,
                                     limit=limit),
        )

    if spec.source == "mooncake":
        path = mooncake.mooncake_path(spec.path)
        meta.update(path=str(path), tokenizer=None, hash_block_size=spec.hash_block_size)
        return _cached(
            spec,
            {"file": _file_identity(path), "blocks": "mooncake-v2", "hash_block": spec.hash_block_size},
            cache_dir,
            lambda: mooncake.mooncake_pool(path, spec.block_size, spec.filters, meta, limit=limit,
                                           progress=progress, hash_block=spec.hash_block_size),
        )

    tok_identity = tok.tokenizer_identity(spec.tokenizer)
    meta.update(tokenizer=spec.tokenizer, template_version=TEMPLATE_VERSION)

    if spec.source == "sharegpt":
        with sharegpt.sharegpt_path(spec.path) as path:
            meta["path"] = str(path)

            def build() -> RequestPool:
                status = ArrayReadStatus()
                convs = sharegpt.iter_sharegpt(path, status)
                with contextlib.closing(convs):
                    builder, stats = expand_conversations(
                        itertools.islice(convs, limit),
                        tok.load_tokenizer(spec.tokenizer),
                        spec.filters,
                        spec.block_size,
                        progress=progress,
                        total=limit,
                        desc="tokenizing sharegpt",
                    )
                return builder.build(
                    {**meta, **stats.as_dict(), "file_truncated": status.truncated,
                     "records_recovered": status.elements}
                )

            return _cached(
                spec,
                {"file": _file_identity(path), "tokenizer": tok_identity, "template": TEMPLATE_VERSION},
                cache_dir,
                build,
            )

    if spec.source == "vllm_custom":
        path = vllm_custom.custom_path(spec.path)
        meta["path"] = str(path)
        return _cached(
            spec,
            {"file": _file_identity(path), "tokenizer": tok_identity, "format": "vllm_custom-v1"},
            cache_dir,
            lambda: vllm_custom.custom_pool(path, tok.load_tokenizer(spec.tokenizer), spec.block_size,
                                            spec.filters, meta, limit=limit, progress=progress),
        )

    if spec.source == "wildchat":
        identity = wildchat.wildchat_identity(spec.path, spec.dataset, spec.split)
        meta.update(path=spec.path or None, dataset=None if spec.path else spec.dataset,
                    split=spec.split)

        def build() -> RequestPool:
            records = wildchat.open_records(spec.path, spec.dataset, spec.split)
            tokenizer = tok.load_tokenizer(spec.tokenizer)
            convs = wildchat.iter_wildchat(itertools.islice(records, limit))
            builder, stats = expand_conversations(
                convs, tokenizer, spec.filters, spec.block_size,
                progress=progress, total=limit, desc="tokenizing wildchat",
            )
            return builder.build({**meta, **stats.as_dict()})

        return _cached(
            spec,
            {"data": identity, "tokenizer": tok_identity, "template": TEMPLATE_VERSION},
            cache_dir,
            build,
        )

    raise ValueError(f"unknown source {spec.source!r}")  # pragma: no cover - validated in config
