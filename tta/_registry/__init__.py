"""The plugin registry's implementation, split by concern; the public surface is :mod:`tta.plugins`.

- ``_env``: environment controls (``TTA_DISABLE_PLUGIN_AUTOLOAD``, ``TTA_PLUGINS``), distribution names.
- ``_errors``: the plugin errors and warning.
- ``_contract``: what a group's plugin object must be.
- ``_discovery``: installed entry points, read once from package metadata.
- ``_names``: the name grammar ``[distribution:]name[/provider-argument]``.
- ``_listing``: :class:`PluginInfo`, :class:`CheckResult`.
- ``_registry``: :class:`Registry` (built-ins, lookup, loading, checking).
- ``_groups``: tta's four registries, :func:`get_registry`, :func:`check`, :func:`refresh`.
"""
