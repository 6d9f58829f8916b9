"""The Textual console. It talks to the accelerator only through mdatui.core.backend.

Layout mirrors the screen: app.py (the App and its refresh loops), screens/ (one module per
screen), views/ (one module per tab of the main screen), widgets/ (pieces several views share).
Each screen and view keeps its styles in a .tcss file beside it.
"""
