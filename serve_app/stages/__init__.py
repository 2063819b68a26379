"""Pure stage logic for the request path. Nothing here imports ray."""
