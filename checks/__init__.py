"""The checks engine: one module per check kind (a probe and a pure evaluation), the anomaly
detector and the scorecard. Used identically by the agent and by `pipectl check`.

Never imports textual, the agent or the console.
"""

from pipectl.checks.engine import CheckEngine

__all__ = ["CheckEngine"]
