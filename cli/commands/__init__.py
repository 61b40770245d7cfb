"""One module per `voxagent` subcommand; see cli/main.py."""
