"""The plumbing of live mode: HTTP server and clients, metric text, child server processes.

Nothing here knows about routing strategies or traces; the products in ``live``
(emulator, gateway, load generator) are built on it.
"""
