"""Screens of the console: one per number key, detail screens, dialogs."""
