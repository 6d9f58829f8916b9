"""Scriptable commands beside the console, as oncn-mda's mdacore."""
