"""The model registry: versions of a model with their scores and lineage, and the aliases that say which is served.

A folder (local, or a volume every replica mounts) holding ``<name>/<version>/`` per version and one
``<name>/aliases.json`` per model name; see ``store.py`` for the layout and ``aliases.py`` for the aliases. This
package imports only ``config`` and ``errors``: the CLI (``tools``) and the server (``serving``) both use it.
"""
