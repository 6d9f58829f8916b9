"""The main screen's tabs, one module each. A view reads the app's current Frame and renders it."""
