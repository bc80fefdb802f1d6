"""Shared typing for store functions."""

from __future__ import annotations

from typing import TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

# A plain connection or one borrowed from a pool: both run queries and transactions.
Conn: TypeAlias = asyncpg.Connection | PoolConnectionProxy
DB: TypeAlias = asyncpg.Connection | asyncpg.Pool | PoolConnectionProxy
