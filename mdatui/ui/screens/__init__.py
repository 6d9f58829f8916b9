"""Screens: the main tabbed screen and the modal ones pushed over it."""
