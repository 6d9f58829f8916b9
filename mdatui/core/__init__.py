"""The accelerator's domain: rules, kernel loader, map readers and events. Knows nothing of Textual."""
