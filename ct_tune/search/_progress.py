"""The progress view of a launch: one line per finished trial on stderr, under a tqdm bar when asked for
and stderr is a terminal (plain lines otherwise, so logs stay readable)."""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["Progress"]


class Progress:
    def __init__(self, total: int | None, bar: bool) -> None:
        self.bar = None
        if bar:
            from tqdm import tqdm

            # disable=None: no bar when stderr is not a terminal
            self.bar = tqdm(total=total, unit="trial", file=sys.stderr, dynamic_ncols=True, leave=False, disable=None)

    def trial(self, line: dict[str, Any], text: str) -> None:
        self.write(text)
        if self.bar is not None and line["state"] in ("COMPLETE", "PRUNED"):
            self.bar.update(1)

    def write(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
