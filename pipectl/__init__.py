"""pipectl: what the agent, the checks and the console share. Never imports textual."""

__version__ = "0.1.0"
