"""``ct-tune cache``: the machine's cache of decoded splits (``ct_tune.data._cache``).

Every split a study scores is decoded once per machine into this folder and read from it by every worker
(8-bit images in 8 bits; the kernel's page cache holds one copy for all of them). It lives in
``data.cache_dir`` when a spec names one, else ``$CT_TUNE_CACHE``, else ``~/.cache/ct-tune/splits``; an
entry is rebuilt whenever its data, transform or files change, so clearing it is only ever about disk space.
"""

from __future__ import annotations

import argparse
from typing import Any

from ct_tune.cli._common import CommandResult, add_command, add_group, print_table


def register(subparsers: Any) -> None:
    commands = add_group(subparsers, "cache", help="list or clear the cache of decoded splits", description=__doc__)
    for name, handler, text in (
        ("list", _list, "list the cached splits: data, split, rows, encoding, size, when made"),
        ("clear", _clear, "remove every cached split (an entry being written is left alone)"),
    ):
        command = add_command(commands, name, handler, help=text)
        command.add_argument(
            "--cache-dir", help="the cache folder (default: $CT_TUNE_CACHE, else ~/.cache/ct-tune/splits)"
        )


def _list(args: argparse.Namespace) -> CommandResult:
    from ct_tune.data import SplitCache

    cache = SplitCache(args.cache_dir)
    entries = cache.entries()
    payload = {
        "cache_dir": str(cache.root),
        "megabytes": round(sum(e.megabytes for e in entries), 1),
        "entries": [
            {
                "folder": e.folder.name,
                "label": e.meta.get("label"),
                "shape": e.meta.get("shape"),
                "encoding": e.meta.get("encoding"),
                "megabytes": round(e.megabytes, 1),
                "created": e.meta.get("created"),
            }
            for e in entries
        ],
    }

    def render() -> None:
        rows = [
            [e["label"], "x".join(map(str, e["shape"] or [])), e["encoding"], f"{e['megabytes']:.1f}", e["created"]]
            for e in payload["entries"]
        ]
        title = f"{cache.root}: {len(rows)} cached split(s), {payload['megabytes']:.1f} MB"
        print_table(title, ["data-split", "rows x sample", "stored as", "MB", "made"], rows)

    return CommandResult(payload, render)


def _clear(args: argparse.Namespace) -> CommandResult:
    from ct_tune.data import SplitCache

    cache = SplitCache(args.cache_dir)
    removed, freed = cache.clear()
    payload = {"cache_dir": str(cache.root), "removed": removed, "megabytes_freed": round(freed, 1)}
    return CommandResult(payload, lambda: print(f"{cache.root}: removed {removed} cached split(s), {freed:.1f} MB"))
