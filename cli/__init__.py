"""The `voxagent` command line: serving (run, exec, serve, worker, keys, functions) and training
(train, eval). The only package that ties serving and training together; `service/` never imports
`training/`."""
from __future__ import annotations

from cli.errors import CommandError

__all__ = ["CommandError"]
