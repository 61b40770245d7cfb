"""voxagent: service package."""
