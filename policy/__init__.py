"""The bundled default policy directory (``init.py`` plus TOML files), used when
``NIMBUS_POLICY_DIR`` is not set. Operators copy it, edit it, and mount their own."""
