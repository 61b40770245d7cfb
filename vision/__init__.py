"""voxagent: vision package."""
