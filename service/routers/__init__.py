"""API v1 routers, one resource each."""
