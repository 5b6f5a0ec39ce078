"""Task functions: pure functions of a composed config, called by the CLI and directly by tests."""
