"""One module per CLI command. Each defines ``register(subparsers)`` which adds its parser and sets ``func``."""
