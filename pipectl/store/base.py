"""Shared typing for store functions."""

from __future__ import annotations

from typing import TypeAlias

import asyncpg

DB: TypeAlias = asyncpg.Connection | asyncpg.Pool
