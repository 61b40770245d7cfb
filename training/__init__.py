"""voxagent: training package."""
