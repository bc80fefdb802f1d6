"""The header names the database as host/db; an entry point that knows more (the demo: its
embedded server's port, the history still loading) says so through the App's sub_title."""

from __future__ import annotations

from pipectl.console.widgets.header import LinkStatus
from tests.console.conftest import console_app, plain, settle


async def test_the_header_shows_the_location_the_entry_point_gives(database: str) -> None:
    app = console_app(database)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot, lambda: app.connection.connected)
        link = plain(app.screen.query_one(LinkStatus))
        assert "● live" in link and "127.0.0.1" in link  # host/db by default
        app.sub_title = "127.0.0.1:54321/apes · loading 30-day history 42%"
        await settle(pilot, lambda: "54321" in plain(app.screen.query_one(LinkStatus)))
        link = plain(app.screen.query_one(LinkStatus))
        assert "● live" in link
        assert "@127.0.0.1:54321/apes · loading 30-day history 42%" in link
        app.sub_title = "127.0.0.1:54321/apes"
        await settle(pilot, lambda: "history" not in plain(app.screen.query_one(LinkStatus)))
        assert plain(app.screen.query_one(LinkStatus)).rstrip().endswith("127.0.0.1:54321/apes")
