"""The error every command raises for the user to read."""


class CliError(Exception):
    """Printed to stderr as it is (it names what and where); the command exits with status 1."""
