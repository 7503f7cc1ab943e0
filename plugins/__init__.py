"""Bundled headline methods (NSH, WCH), each a plugin: hashbench.plugins.<name>."""
