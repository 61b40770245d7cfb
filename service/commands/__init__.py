"""One module per `voxagent` subcommand; see service/cli.py."""


class CommandError(Exception):
    """A user-facing failure: printed as one clear line, exit status 2.

    Defined here rather than in ``service.cli`` so that ``python -m service.cli`` (which runs that
    module as ``__main__``) and the command modules share one class.
    """
