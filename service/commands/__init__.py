"""One module per `voxagent` subcommand; see service/cli.py."""
