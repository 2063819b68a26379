"""The push feed: every ingress replica hears whose features were pushed, or learns it cannot tell."""

from __future__ import annotations

import asyncio

import pytest

from serve_app.push_feed import Pushed, PushFeed, follow


def test_a_follower_hears_each_push_once_in_order() -> None:
    feed = PushFeed()
    first = feed.since(None)
    assert first.users is None  # a first poll cannot know what it missed: drop every cached row
    feed.record([3, 1])
    feed.record([3, 7])
    news = feed.since(first.cursor)
    assert news.users == (3, 1, 7)  # each user once, in the order first pushed
    assert feed.since(news.cursor).users == ()
    feed.record([9])
    assert feed.since(news.cursor).users == (9,)


def test_a_new_writer_or_a_follower_too_far_behind_cannot_be_told_who() -> None:
    feed = PushFeed(keep=3)
    cursor = feed.since(None).cursor
    feed.record([1, 2])
    assert feed.since(cursor).users == (1, 2)
    feed.record([3, 4, 5])  # 1 and 2 are gone from the feed: a follower at `cursor` missed them
    assert feed.since(cursor).users is None
    restarted = PushFeed()
    restarted.record([4])
    assert restarted.since(feed.since(cursor).cursor).users is None  # another epoch
    assert feed.since((feed.epoch, 99)).users is None  # a cursor from the future is not this feed's


def test_follow_polls_with_the_last_cursor_and_survives_a_failing_writer() -> None:
    feed = PushFeed()
    heard: list[Pushed] = []
    polls: list = []
    failures = iter([True, False, False, False, True, False, False, False, False, False])

    async def poll(cursor):
        polls.append(cursor)
        if next(failures, False):
            raise ConnectionError("the writer is restarting")
        return feed.since(cursor)

    async def main() -> None:
        task = asyncio.create_task(follow(poll, heard.append, interval_s=0.01))
        await asyncio.sleep(0.05)
        feed.record([5])
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert polls[0] is None and polls[1] is None  # the failed first poll is retried from scratch
    assert heard[0].users is None
    assert [p.users for p in heard if p.users] == [(5,)]
    assert all(p.cursor[0] == feed.epoch for p in heard)
