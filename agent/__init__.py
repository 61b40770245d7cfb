"""voxagent: agent package."""
