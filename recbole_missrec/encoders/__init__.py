"""Frozen encoders that turn item text and images into the plugin's feature tables.

Import the submodules directly (``recbole_missrec.encoders.text``); this package stays light so that
importing the plugin does not load transformers.
"""
