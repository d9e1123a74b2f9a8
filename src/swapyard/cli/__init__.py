"""Thin commands: ``serve`` runs the server; the rest will be admin-API clients."""
