"""The pipectl agent: refreshes summaries on schedule and on request, runs checks, records all.

It shares nothing with the console but the pipectl schema of the monitored database.
"""
